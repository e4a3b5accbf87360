"""Read TensorBoard event files back (tensorboardX's protobufs; no TensorFlow)."""

import glob
import os
import struct


def read_events(logdir):
    """``{tag: [(step, value), ...]}`` of the scalars, and ``{tag: count}`` of the images,
    over every event file in ``logdir``."""
    from tensorboardX.proto import event_pb2

    scalars, images = {}, {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                if v.HasField("image"):
                    images[v.tag] = images.get(v.tag, 0) + 1
                elif v.HasField("simple_value") or v.HasField("tensor"):
                    value = v.simple_value if v.HasField("simple_value") else None
                    scalars.setdefault(v.tag, []).append((event.step, value))
    return scalars, images

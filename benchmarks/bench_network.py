"""Network speed on this machine: SSD300-VGG16 inference and train step, SSDLite train step.

    python benchmarks/bench_network.py [--repeats 2] [--torch /path/to/torch-venv/bin/python] [--cases a,b]
        [--variants]        # also: NCHW layout and bfloat16 compute for the SSD300 train step
        [--only jax|torch] [--torch-same-malloc]
        [--conv-wgrad auto|shifted|xla] [--cpu-kernels auto|on|off]   # ssd_jax.models.resolve_conv_choices

Rows: SSD300-VGG16 (21 outputs, 300x300) inference at batch 1 and 8, train step (forward +
backward + optax SGD-momentum update, jitted, params/opt state donated) at batch 4 and 8;
SSDLite-MobileNetV2 and SSDLite-MobileNetV3-Large (320x320, width 1) train steps at batch 16. Compile time is the first
call minus a steady-state call. The train loss is a stand-in (softmax cross-entropy
against class 0 + L1 on the offsets): it costs the same backward pass through the network
as the multibox loss, which is not part of this benchmark.

The torchvision reference runs in a subprocess of ``--torch`` (a python with torch and
torchvision, 2 threads): ``ssd300_vgg16`` ``head(backbone(x))`` with the same stand-in
loss and ``torch.optim.SGD``; the light reference is torchvision's
``ssdlite320_mobilenet_v3_large`` (the model the recorded number is for; torchvision has
no MobileNetV2 SSDLite), and the row ``ssdlite_train_b16_samenet`` compares the same jax
result with our MobileNetV2 SSDLite rebuilt from torchvision's parts (``mobilenet_v2``
features, ``ssdlite._extra_block``, ``SSDLiteHead``: the same layers and 3,399,108
parameters); the row ``ssdlite_v3_train_b16`` is ours ``ssdlite_mobilenetv3`` against
torchvision's ``ssdlite320_mobilenet_v3_large``, the same network (2,469,860 parameters).
Without torch the recorded reference numbers are used.

Like ``launch.py``, this script restarts itself once with glibc malloc settings
(``ssd_jax/host_malloc.py``); torch runs with glibc's defaults, as its users run it, and
with ``--torch-same-malloc`` also with the same settings (torch gains from them too).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from ssd_jax import host_malloc, run_info, runtime, xla_flags

#: torchvision 0.29, CPU, 2 threads, the recorded reference figures.
RECORDED_TORCH = {"ssd300_infer_b1": 2.6, "ssd300_train_b4": 0.94, "ssdlite_train_b16": 11.3, "ssdlite_v3_train_b16": 11.3}

TORCH_SCRIPT = r"""
import json, sys, time, torch, torchvision
torch.set_num_threads(2)
what, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
if what.startswith("ssd300"):
    m = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21); size = 300
elif what.startswith("ssdlitev2"):  # our light network rebuilt from torchvision's parts (same layers, 3,399,108 params)
    from functools import partial
    from torchvision.models.detection import ssdlite
    norm = partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
    f = torchvision.models.mobilenet_v2(norm_layer=norm).features
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Sequential(*f[:14], f[14].conv[0])  # to block 13's expansion (stride 16)
            self.b = torch.nn.Sequential(*f[14].conv[1:], *f[15:])
            chans, extras = 1280, []
            for c in (512, 256, 256, 128):
                extras.append(ssdlite._extra_block(chans, c, norm)); chans = c
            self.extras = torch.nn.ModuleList(extras)
        def forward(self, x):
            h = self.a(x); x = self.b(h); out = [h, x]
            for e in self.extras:
                x = e(x); out.append(x)
            return {str(i): o for i, o in enumerate(out)}
    m = torch.nn.Module(); m.backbone = Backbone()
    m.head = ssdlite.SSDLiteHead([576, 1280, 512, 256, 256, 128], [6] * 6, 21, norm); size = 320
else:
    m = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21); size = 320
x = torch.randn(batch, 3, size, size)
def fwd():
    out = m.head(list(m.backbone(x).values()))
    return out["cls_logits"], out["bbox_regression"]
if what.endswith("infer"):
    m.eval()
    def step():
        with torch.no_grad():
            fwd()
else:
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    def step():
        opt.zero_grad(set_to_none=True)
        l, o = fwd()
        loss = (torch.logsumexp(l, -1) - l[..., 0]).mean() + o.abs().mean()
        loss.backward(); opt.step()
step()
ts = []
for _ in range(repeats):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
print(json.dumps({"imgs_per_s": batch / min(ts), "step_s": min(ts)}))
"""


def jax_case(name: str, batch: int, train: bool, repeats: int, layout="NHWC", dtype="float32", size=None, conv=None):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ssd_jax import models

    kw = dict(layout=layout, compute_dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, conv=conv,
              rngs=nnx.Rngs(0))
    if size:
        kw["image_size"] = size
    model = models.build_model(name, 20, **kw)
    g, p, s = models.split(model)
    size = model.spec.image_size
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    if train:
        opt = optax.sgd(1e-3, momentum=0.9)
        o = opt.init(p)

        def step(p, s, o, x):
            def loss_fn(p):
                (lg, off), ns = models.apply(g, p, s, x, train=True)
                return jnp.mean(jax.nn.logsumexp(lg, -1) - lg[..., 0]) + jnp.mean(jnp.abs(off)), ns

            (loss, ns), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
            upd, o = opt.update(grads, o, p)
            return optax.apply_updates(p, upd), ns, o, loss

        fn = jax.jit(step, donate_argnums=(0, 1, 2))
        state = [p, s, o]

        def call():
            nonlocal state
            p_, s_, o_, loss = fn(*state, x)
            state = [p_, s_, o_]
            return loss
    else:
        fn = jax.jit(lambda p, s, x: models.apply(g, p, s, x, train=False)[0])

        def call():
            return fn(p, s, x)

    t = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(call())
        ts.append(time.perf_counter() - t)
    best = min(ts)
    return {"imgs_per_s": batch / best, "step_s": best, "compile_s": max(first - best, 0.0)}


def torch_case(python: str, what: str, batch: int, repeats: int, env=None):
    r = subprocess.run([python, "-c", TORCH_SCRIPT, what, str(batch), str(repeats)], capture_output=True, text=True,
                       timeout=1200, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--torch", default=os.environ.get("SSD_JAX_TORCH_PYTHON", ""),
                    help="python with torch+torchvision for the measured reference (default: "
                         "$SSD_JAX_TORCH_PYTHON; empty: use the recorded numbers)")
    ap.add_argument("--cases", default="", help="comma-separated subset of the case keys (default: all)")
    ap.add_argument("--variants", action="store_true", help="also NCHW and bfloat16 for the SSD300 train step at batch 4")
    ap.add_argument("--only", choices=("jax", "torch"), default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--torch-same-malloc", action="store_true",
                    help="also measure torch with this process's glibc malloc settings (ssd_jax/host_malloc.py; "
                         "by default torch runs with glibc's defaults, as its users run it)")
    ap.add_argument("--xla-profile", choices=("auto", "train", "inference"), default="auto",
                    help="the CPU flags of ssd_jax.xla_flags, as launch.py sets them: train (launch.py train) "
                         "or inference (launch.py eval/predict); auto: inference cases run in a child "
                         "process with the inference profile (SSD_JAX_XLA_DEFAULTS=0: XLA's own flags)")
    ap.add_argument("--conv-wgrad", choices=("auto", "shifted", "xla"), default="auto",
                    help="convolution kernel gradients (ssd_jax.models.resolve_conv_choices): auto (matmuls on "
                         "the CPU while YNNPACK takes convolutions), shifted (matmuls everywhere) or xla")
    ap.add_argument("--cpu-kernels", choices=("auto", "on", "off"), default="auto",
                    help="the FFI CPU kernels for depthwise gradients (ssd_jax.kernels): auto, on (a failed "
                         "build is an error) or off")
    args = ap.parse_args(argv)

    cases = [  # key, model, batch, train, torch reference key
        ("ssd300_infer_b1", "ssd300_vgg16", 1, False, "ssd300_infer"),
        ("ssd300_infer_b8", "ssd300_vgg16", 8, False, "ssd300_infer"),
        ("ssd300_train_b4", "ssd300_vgg16", 4, True, "ssd300_train"),
        ("ssd300_train_b8", "ssd300_vgg16", 8, True, "ssd300_train"),
        ("ssdlite_train_b16", "ssdlite_mobilenetv2", 16, True, "ssdlite_train"),
        # the same jax result against torch running our MobileNetV2 SSDLite (built from torchvision's parts)
        ("ssdlite_train_b16_samenet", "ssdlite_mobilenetv2", 16, True, "ssdlitev2_train"),
        # the reference's own network: torchvision's ssdlite320_mobilenet_v3_large, ours ssdlite_mobilenetv3
        ("ssdlite_v3_train_b16", "ssdlite_mobilenetv3", 16, True, "ssdlite_train"),
    ]
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c[0] for c in cases}
        if unknown:
            ap.error(f"unknown cases {sorted(unknown)}; choose from {[c[0] for c in cases]}")
        cases = [c for c in cases if c[0] in wanted]
    profile, inference_child = args.xla_profile, None
    if profile == "auto":
        infer = [c[0] for c in cases if not c[3]]
        if infer and len(infer) < len(cases) and args.only != "torch":  # mixed: inference in a child
            inference_child = infer
            cases = [c for c in cases if c[3]]
        profile = "train" if any(c[3] for c in cases) else "inference"
    original_flags = os.environ.get("XLA_FLAGS", "")
    # as launch.py (ssd_jax/runtime.py): allocator restart, this profile's flags, before JAX starts
    runtime.setup_process("eval" if profile == "inference" else "train")
    child_rows = {}
    if inference_child:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "infer.json")
            child_args = ["--cases", ",".join(inference_child), "--repeats", str(args.repeats), "--xla-profile",
                          "inference", "--json", out] + (["--torch", args.torch] if args.torch else []) + \
                         (["--only", args.only] if args.only else []) + \
                         (["--torch-same-malloc"] if args.torch_same_malloc else []) + \
                         ["--conv-wgrad", args.conv_wgrad, "--cpu-kernels", args.cpu_kernels]
            env = {**os.environ, "XLA_FLAGS": original_flags}  # the child adds its own profile
            subprocess.run([sys.executable, os.path.abspath(__file__), *child_args], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            with open(out) as f:
                child_rows = json.load(f)

    import jax

    from ssd_jax.models import layers

    # resolved once, after xla_flags.apply: "auto" judges this process's XLA_FLAGS
    conv = layers.resolve_conv_choices(args.conv_wgrad, args.cpu_kernels)
    have_torch = bool(args.torch) and os.path.exists(args.torch) and args.only != "jax"
    results = dict(child_rows)
    jax_done, torch_done = {}, {}  # a network measured once per run, on each side
    for key, name, batch, train, tkey in cases:
        row = {"model": name, "batch": batch, "train": train}
        if args.only != "torch":
            if (name, batch, train) not in jax_done:
                jax_done[name, batch, train] = jax_case(name, batch, train, args.repeats,
                                                        size=320 if name.startswith("ssdlite") else None, conv=conv)
            row["jax"] = jax_done[name, batch, train]
        if have_torch:
            try:
                if (tkey, batch) not in torch_done:
                    torch_done[tkey, batch] = {"torch": torch_case(args.torch, tkey, batch, args.repeats,
                                                                   env=host_malloc.without_added())}
                    if args.torch_same_malloc:
                        torch_done[tkey, batch]["torch_same_malloc"] = torch_case(args.torch, tkey, batch, args.repeats)
                row.update(torch_done[tkey, batch])
                row["torch_source"] = "measured"
            except Exception as e:  # noqa: BLE001 - report and fall back
                print(f"torch reference failed for {key}: {e}", file=sys.stderr)
        if "torch" not in row and key in RECORDED_TORCH:
            row["torch"] = {"imgs_per_s": RECORDED_TORCH[key]}
            row["torch_source"] = "recorded"
        results[key] = row
        print(f"{key}: {row}", file=sys.stderr, flush=True)
    if args.variants and args.only != "torch" and "ssd300_train_b4" in results:
        for layout, dtype in (("NCHW", "float32"), ("NHWC", "bfloat16")):
            key = f"ssd300_train_b4_{layout}_{dtype}"
            results[key] = {"model": "ssd300_vgg16", "batch": 4, "train": True,
                            "jax": jax_case("ssd300_vgg16", 4, True, args.repeats, layout=layout, dtype=dtype,
                                            conv=conv),
                            "torch": results["ssd300_train_b4"].get("torch"), "torch_source": results["ssd300_train_b4"].get("torch_source")}
            print(f"{key}: {results[key]}", file=sys.stderr, flush=True)

    print(f"# bench_network {datetime.date.today()} | jax {jax.__version__} | {run_info.cpu_model()}, "
          f"{os.cpu_count()} CPUs | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
          + (f" (inference cases: {xla_flags.with_defaults('', xla_flags.PROFILES['inference'])!r}, child process)"
             if child_rows and not xla_flags.opted_out(xla_flags.OPT_OUT_ENV) else ""))
    print(f"# malloc: jax process {host_malloc.current() or 'glibc defaults'}; torch "
          f"{host_malloc.current(host_malloc.without_added()) or 'glibc defaults'}"
          + (", and again with the jax process's settings (last columns)" if args.torch_same_malloc else ""))
    print(f"# CPU kernels (ssd_jax.kernels, depthwise gradients): --cpu-kernels {args.cpu_kernels} -> "
          f"{'used' if conv.cpu_kernels else 'not used'}; conv kernel gradients: --conv-wgrad "
          f"{args.conv_wgrad} -> {'matmuls' if conv.matmul_wgrad else 'XLA'}"
          + (" (every conv)" if conv.matmul_wgrad_all else ""))
    same = args.torch_same_malloc and have_torch
    print("| case | jax img/s | jax step s | compile s | torchvision img/s | source | ratio jax/torch |"
          + (" torch, jax's malloc, img/s | ratio |" if same else ""))
    print("|---|---:|---:|---:|---:|---|---:|" + ("---:|---:|" if same else ""))
    nan = float("nan")
    for key, row in results.items():
        j, t = row.get("jax", {}), row.get("torch") or {}
        ratio = j["imgs_per_s"] / t["imgs_per_s"] if j and t else nan
        line = (f"| {key} | {j.get('imgs_per_s', nan):.2f} | {j.get('step_s', nan):.2f} | "
                f"{j.get('compile_s', nan):.1f} | {t.get('imgs_per_s', nan):.2f} | {row.get('torch_source', '-')} | {ratio:.2f} |")
        if same:
            t2 = row.get("torch_same_malloc") or {}
            line += f" {t2.get('imgs_per_s', nan):.2f} | {j['imgs_per_s'] / t2['imgs_per_s'] if j and t2 else nan:.2f} |"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

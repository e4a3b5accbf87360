"""run_info.cpu_model: the CPU named with its family and model numbers."""

from ssd_jax import run_info

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: Other
"""


def test_cpu_model_names_family_and_model_of_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert run_info.cpu_model(str(path)) == "AMD EPYC (family 26, model 2)"


def test_cpu_model_without_family_fields(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nHardware\t: SomeBoard\n")
    assert run_info.cpu_model(str(path)) == "SomeBoard"


def test_cpu_model_without_the_file(tmp_path):
    name = run_info.cpu_model(str(tmp_path / "missing"))
    assert isinstance(name, str) and name

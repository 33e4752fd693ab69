"""`img2img demo --quick`: the whole path, end to end, on the session's stack."""

import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_quick_demo_enhances_held_out_photos(demo_run):
    out = demo_run.out_dir
    report = (out / "report.md").read_text()
    assert demo_run.rows, "no held-out photo was enhanced"
    for row in demo_run.rows:
        grid = Image.open(out / (row["photo"].rsplit(".", 1)[0] + ".png"))
        assert grid.width > 3 * 200  # blurred | enhanced | original
        assert row["photo"] in report
    m = demo_run.mean
    print(f"demo: blurred {m['blurred_psnr']:.2f} dB -> enhanced {m['enhanced_psnr']:.2f} dB")
    assert m["enhanced_psnr"] > m["blurred_psnr"] + 0.1
    assert "improves the degraded photos" in report


def test_demo_reuses_what_exists(demo_run, stack, tmp_path):
    import time

    from img2img_demo.run import run_demo

    t0 = time.time()
    again = run_demo(stack, quick=True, out_dir=tmp_path / "again", say=lambda m: None)
    assert again.version == demo_run.version  # no retraining, same champion
    assert time.time() - t0 < 120

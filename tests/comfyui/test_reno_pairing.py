"""The pairing rule (latent_clip.check_family): a Latent-CLIP only rewards latents of its own VAE.

Checked against the numbers the real programs carry (ComfyUI 0.3.75's latent formats, the tiny
diffusers pipelines' VAE configs) and through ``python -m train bench``."""
import json

import pytest

from latent_clip import LatentContractError, LatentFamilyMismatch, check_family, family_of, get_latent_family, \
    latent_families
from train.benchmarks import main
from tiny_pipelines import build_flux, build_latent_clip, build_sd

SDXL_TO_SD15 = r"reads SDXL / SDXL-Turbo VAE .*\('sdxl'\).*makes SD 1.x / 2.x / SD-Turbo VAE latents \('sd15'\)"


def test_every_registered_family_is_found_by_its_numbers_and_only_pairs_with_itself():
    families = latent_families().values()
    for family in families:
        assert family_of(family.channels, family.scaling_factor, family.shift_factor) == family
        assert check_family(family, family.channels, family.scaling_factor, family.shift_factor) is None
        for other in families:
            if other.name == family.name:
                continue
            expected = LatentFamilyMismatch if other.channels == family.channels else LatentContractError
            with pytest.raises(expected, match=f"'{family.name}'.*" + (f"'{other.name}'" if other.channels ==
                                                                       family.channels else "")):
                check_family(family, other.channels, other.scaling_factor, other.shift_factor)
    assert family_of(4, 0.5) is None  # a VAE nobody registered


@pytest.mark.comfyui
def test_comfyui_latent_formats_map_to_our_families(comfy_inprocess):
    """What the nodes read from a ComfyUI MODEL: its latent_format's channels, scale and shift."""
    import comfy.latent_formats as lf

    def of(fmt):
        return family_of(fmt.latent_channels, fmt.scale_factor, getattr(fmt, "shift_factor", 0.0))

    assert [getattr(of(f()), "name", None) for f in (lf.SDXL, lf.SD15, lf.SD3, lf.Flux)] == \
        ["sdxl", "sd15", "sd3", "flux"]
    playground = lf.SDXL_Playground_2_5()  # SDXL's VAE, but normalised otherwise: not the SDXL latent space
    with pytest.raises(LatentFamilyMismatch, match="unregistered VAE .4 channels, scaling 0.5"):
        check_family(get_latent_family("sdxl"), playground.latent_channels, playground.scale_factor,
                     override="allow_family_mismatch")


def _geneval(pipeline, latent_clip, out, *extra):
    return ["geneval", "--pipeline", str(pipeline), "--latent-clip", str(latent_clip), "--outdir", str(out),
            "--resolution", "64", "--device", "cpu", "--samples", "1", "--iterations", "2", "--limit", "1",
            "--summary-wait", "5", *extra]


def test_train_bench_refuses_another_family_unless_allowed(tmp_path):
    """The tiny SD pipeline's VAE has SDXL's numbers: an SD1.5-family Latent-CLIP is refused with
    both families named, runs with --allow-family-mismatch (and says so), and a 16-channel
    pipeline is refused even then."""
    sd = build_sd(tmp_path / "sd")
    sd15_clip = build_latent_clip(tmp_path / "lc_sd15.safetensors", family="sd15")
    with pytest.raises(LatentFamilyMismatch, match=r"lc_sd15.safetensors with .*sd: this Latent-CLIP "
                                                   r"reads SD 1.x / 2.x / SD-Turbo VAE latents \('sd15'\) but the "
                                                   r"diffusion model makes SDXL .*--allow-family-mismatch"):
        main(_geneval(sd, sd15_clip, tmp_path / "refused"))
    assert not (tmp_path / "refused" / "summary.json").exists()
    with pytest.warns(UserWarning, match=r"'sd15'.*'sdxl'.*--allow-family-mismatch is set"):
        summary = main(_geneval(sd, sd15_clip, tmp_path / "allowed", "--allow-family-mismatch"))
    assert summary["images"] == 1
    assert json.loads((tmp_path / "allowed" / "summary.json").read_text())["images"] == 1
    flux = build_flux(tmp_path / "flux")
    with pytest.raises(LatentContractError, match="reads 4-channel SD 1.x.*makes 16-channel FLUX.1 VAE latents"):
        main(_geneval(flux, sd15_clip, tmp_path / "channels", "--allow-family-mismatch",
                      "--max-sequence-length", "32"))

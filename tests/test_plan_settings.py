"""A plan says what it was made for in the user's terms, and one check with one set of messages refuses a run or
call that differs, in the CLI (`--plan`) and the API (`enable_cache`): the model by content (config and weights
digest, not the path string), guidance, size, branches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import ertacli
from conftest import cli
from ertacli.errors import PlanMismatch, UserError

ROOT = Path(__file__).resolve().parents[1]
T = 6  # sampling steps everywhere here: small and fast


def one_line(err: str) -> str:
    return " ".join(err.split())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A module-wide results folder, identity cache and working directory."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("settings")
    mp.setenv("ERTACACHE_RESULTS", str(root / "results"))
    mp.setenv("ERTACACHE_CACHE", str(root / "cache"))
    mp.chdir(root)
    yield mp, root
    mp.undo()


class _Quiet:
    def readouterr(self):
        return type("Out", (), {"out": "", "err": ""})()


def two_prompts(root: Path, source: str) -> str:
    lines = [s for s in (ROOT / "prompts" / source).read_text().splitlines() if s and not s.startswith("#")]
    path = root / f"two-{source}"
    path.write_text("\n".join(lines[:2]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def wan_plan(workdir):
    """`ertacache search` on tiny-wan (guidance 4: branches cond and uncond) at T steps, two prompts."""
    mp, root = workdir
    sets = ["--set", f"sampling.steps={T}", "--set", "calibration.seeds=[0]",
            "--set", f"calibration.prompts={two_prompts(root, 'tiny-video-calibration.txt')}"]
    code = cli(mp, _Quiet(), "search", "-m", "tiny-wan", "--lambda", "0.1", *sets, "-q")[0]
    assert code == 0
    (search,) = sorted((root / "results" / "tiny-wan").glob("search-*"))
    return str(search / "plans" / "lambda-0.1"), sets


@pytest.fixture(scope="module")
def wan_pipe():
    """tiny-wan as the CLI loads it (from models/tiny-wan), T steps."""
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    return load_pipeline(resolve_recipe("tiny-wan", [f"sampling.steps={T}"]), "cpu")


def wan_call(loaded, guidance: float, size: int = 16) -> dict:
    return dict(num_inference_steps=T, height=size, width=size, num_frames=8, guidance_scale=guidance,
                output_type="latent", generator=torch.Generator("cpu").manual_seed(0),
                **loaded.encoder.pipeline_kwargs(["a handwritten seven drifting left"], ""))


def api_refusal(loaded, plan_dir: str, **call) -> str:
    with ertacli.cached(loaded.pipe, ertacli.load_plan(plan_dir)):
        with pytest.raises(PlanMismatch) as info:
            loaded.pipe(**wan_call(loaded, **call))
    return info.value.message


def test_plan_records_its_settings_in_user_terms(wan_plan):
    plan_dir, _ = wan_plan
    data = json.loads((Path(plan_dir) / "plan.json").read_text())
    assert data["settings"] == {"pipeline": "WanPipeline", "steps": T, "height": 16, "width": 16, "frames": 8,
                                "guidance_scale": 4.0, "guidance": "cfg", "dtype": "float32",
                                "call": {"negative_prompt": "", "text_encoder": "minilm"}}
    model = data["model"]
    assert model["transformer"] == "WanTransformer3DModel" and model["config"]["num_layers"] == 3
    assert len(model["weights"]) == 64 and model["source"].endswith("models/tiny-wan/transformer")
    assert data["made_by"] == "ertacache search" and data["branches"] == ["cond", "uncond"]


@pytest.mark.parametrize("guidance, words", [(8.0, ("guidance_scale 4.0, this run has 8.0",)),
                                             (1.0, ("guidance_scale 4.0, this run has 1.0", "two-branch"))],
                         ids=["other-guidance", "one-branch-call"])
def test_guidance_refused_alike_in_api_and_cli(workdir, wan_plan, wan_pipe, capsys, guidance, words):
    """The same one-line message from `enable_cache` + a call and from `ertacache generate --plan`."""
    plan_dir, sets = wan_plan
    api = api_refusal(wan_pipe, plan_dir, guidance=guidance)
    mp, root = workdir
    code, _, err = cli(mp, capsys, "generate", "-m", "tiny-wan", "--plan", plan_dir, *sets,
                       "--set", f"sampling.guidance_scale={guidance}", "--prompt", "a seven", "--seed", "0", "-q")
    assert code == 2 and api in one_line(err), (api, err)
    assert all(w in api for w in words) and "re-run calibration at guidance_scale" in api and "\n" not in api
    assert not list((root / "results" / "tiny-wan").glob("generate-*"))  # refused before anything ran


def test_size_named_as_the_user_wrote_it(workdir, wan_plan, wan_pipe, capsys):
    """A 16x16 plan at 32x32: `height/width 16x16`, not a latent shape, in both paths."""
    plan_dir, sets = wan_plan
    api = api_refusal(wan_pipe, plan_dir, guidance=4.0, size=32)
    assert "was made with height/width 16x16, this run has 32x32" in api
    mp, _ = workdir
    code, _, err = cli(mp, capsys, "generate", "-m", "tiny-wan", "--plan", plan_dir, *sets, "--set",
                       "sampling.height=32", "--set", "sampling.width=32", "--prompt", "a seven", "--seed", "0", "-q")
    assert code == 2 and "was made with height/width 16x16, this run has 32x32" in one_line(err)


def flux_plan(model_dir: Path, save_to: Path) -> "ertacli.Plan":
    """ertacli.calibrate on tiny-flux loaded by an absolute path (T steps, two prompts, one seed)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(model_dir.resolve()), text_encoder=None, tokenizer=None,
                                        text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return ertacli.calibrate(pipe, ["a handwritten seven", "the digit three drawn thick"], seeds=[0], nfe=T - 2,
                             method="ertacache", prompt_encoder=ertacli.minilm_encoder("flux"),
                             num_inference_steps=T, height=16, width=16, save_to=str(save_to))


FAST_EVAL = ["--set", f"sampling.steps={T}", "--set", "eval.metrics=[psnr]", "--set", "eval.timing_rounds=1",
             "--set", "eval.timing_samples=1", "--set", "eval.warmup=0", "--prompt", "a handwritten seven",
             "--seed", "0", "-q"]


def test_calibrated_plan_on_an_absolute_path_is_accepted_by_eval(workdir, capsys):
    """A plan from `ertacli.calibrate` on models/tiny-flux loaded by its absolute path passes `ertacache eval
    --model tiny-flux --plan DIR` (the recipe names the folder by a relative path): same model by content.
    tiny-flux has no guidance embedding: another guidance_scale is not refused."""
    mp, root = workdir
    plan = flux_plan(ROOT / "models" / "tiny-flux", root / "flux-plan")
    data = json.loads((root / "flux-plan" / "plan.json").read_text())
    assert data["made_by"] == "ertacli.calibrate(method='ertacache')" and data["settings"]["guidance"] == "unused"
    code, out, err = cli(mp, capsys, "eval", "-m", "tiny-flux", "--plan", str(root / "flux-plan"),
                         "--set", "sampling.guidance_scale=7.0", *FAST_EVAL)
    assert code == 0, err
    (run,) = sorted((root / "results" / "tiny-flux").glob("eval-*"))
    summary = json.loads((run / "eval.json").read_text())
    assert summary["nfe"] == plan.nfe < T and summary["psnr"] > 30


def test_other_weights_behind_the_same_path_are_refused(workdir, capsys):
    """A copy of tiny-flux at one path: a plan and a baseline made on it; then other weights at that path: the
    plan is refused naming the model weights, and eval does not reuse the old baseline."""
    from safetensors.torch import load_file, save_file

    from ertacli.calibration.samples import Samples
    from ertacli.commands.eval import baseline_for
    from ertacli.runs.job import Job

    mp, root = workdir
    copy = root / "models" / "tiny-flux"
    shutil.copytree(ROOT / "models" / "tiny-flux", copy)
    flux_plan(copy, root / "copy-plan")
    at = ["--set", f"model.path={copy}"]
    samples = Samples(["a handwritten seven"], [0])
    job = Job.make("tiny-flux", [f"sampling.steps={T}", f"model.path={copy}"], "cpu", quiet=True)
    first = baseline_for(job, samples)
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(k for k in tensors if tensors[k].is_floating_point() and tensors[k].dim() == 2)[0]
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(weights))
    code, _, err = cli(mp, capsys, "eval", "-m", "tiny-flux", "--plan", str(root / "copy-plan"), *at, *FAST_EVAL)
    assert code == 2 and "was made with model weights sha256" in one_line(err) and "re-run" in err, err
    job = Job.make("tiny-flux", [f"sampling.steps={T}", f"model.path={copy}"], "cpu", quiet=True)
    assert baseline_for(job, samples) != first  # another model: its own baseline
    with pytest.raises(UserError, match="model weights sha256"):
        from ertacli.commands.eval import read_generate

        read_generate(first, job)


def test_identity_is_cached_per_folder_and_follows_the_files(tmp_path, monkeypatch):
    """A folder's identity is hashed once while its files are unchanged, and again when a file changes."""
    from ertacli.identity import folder_identity

    monkeypatch.setenv("ERTACACHE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m" / "transformer"
    folder.mkdir(parents=True)
    (folder / "w.safetensors").write_bytes(b"one")
    calls = []

    def compute():
        calls.append(1)
        return {"transformer": "X", "config": {}, "weights": "ab" * 32 if len(calls) == 1 else "cd" * 32}

    first = folder_identity(tmp_path / "m", "float32", compute)
    assert folder_identity(tmp_path / "m", "float32", compute) == first and len(calls) == 1
    assert folder_identity(tmp_path / "m", "bfloat16", compute)["weights"] == "cd" * 32  # dtype: its own entry
    (folder / "w.safetensors").write_bytes(b"two!")
    assert folder_identity(tmp_path / "m", "float32", compute) != first and len(calls) == 3


def test_a_plan_from_before_recorded_settings_loads_and_says_re_run(tmp_path):
    """Old plans still load; where their settings digest differs, one line says to re-run search."""
    from ertacli.plan import check_plan
    from ertacli.plan_settings import RunSettings

    from test_plan_validation import VALID, write

    plan = ertacli.load_plan(write(tmp_path / "old", VALID))
    assert plan.settings is None and plan.model is None
    with pytest.raises(PlanMismatch) as info:
        check_plan(plan, RunSettings(steps=6, legacy_key="fedcba9876543210"))
    assert "predates recorded settings" in info.value.message and "re-run `ertacache search`" in info.value.message
    check_plan(plan, RunSettings(steps=6, legacy_key=VALID["recipe_key"]))


def test_guidance_is_compared_only_where_the_pipeline_uses_it():
    """FLUX without a guidance embedding ignores guidance_scale; with one, every value matters; classifier-free
    guidance pipelines use it above 1 (at or below 1 no second branch runs, whatever the value)."""
    import diffusers

    from ertacli.plan_settings import RunSettings, check_settings, guidance_use

    assert guidance_use(diffusers.FluxPipeline, {"guidance_embeds": False}) == "unused"
    assert guidance_use(diffusers.FluxPipeline, {"guidance_embeds": True}) == "embedded"
    assert guidance_use(diffusers.HunyuanVideoPipeline, {"guidance_embeds": False}) == "unused"
    for cls in (diffusers.WanPipeline, diffusers.CogVideoXPipeline, diffusers.StableDiffusion3Pipeline):
        assert guidance_use(cls, {}) == "cfg"
    plan = {"guidance_scale": 3.5, "guidance": "unused"}
    check_settings("plan p", plan, None, RunSettings(guidance_scale=7.0))
    with pytest.raises(PlanMismatch, match=r"guidance_scale 3.5, this run has 7.0: "):
        check_settings("plan p", {**plan, "guidance": "embedded"}, None, RunSettings(guidance_scale=7.0))
    check_settings("plan p", {"guidance_scale": 1.0, "guidance": "cfg"}, None, RunSettings(guidance_scale=0.0))
    with pytest.raises(PlanMismatch, match="one-branch plan on a call with classifier-free guidance"):
        check_settings("plan p", {"guidance_scale": 1.0, "guidance": "cfg"}, None, RunSettings(guidance_scale=5.0))

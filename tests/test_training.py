"""The GAN-INT-CLS training system: models, steps, resume, divergence, and the whole command line (StackGAN and
AttnGAN too: training, then sampling and evaluating their run folders)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import t2ifast.train as train_module
from t2ifast import sample
from t2ifast.data import generate_synthetic, load_attributes, make_loader, open_dataset
from t2ifast.losses import damsm_sentence_loss, damsm_word_loss
from t2ifast.models.image_encoder import ImageEncoder
from t2ifast.models.sentence_embeddings import DAMSMSentenceEmbeddings
from t2ifast.models.text_conditioned_generator import StyleEncoder, TextConditionedGenerator
from t2ifast.models.text_encoder import TextEncoder
from t2ifast.train import contrast_groups, damsm_cache_folder, pretrain_damsm
from t2ifast.training import checkpoint, loop
from t2ifast.training.artifacts import load_damsm_encoders, load_run, load_weights, save_weights
from t2ifast.training.attngan import AttnGANTask
from t2ifast.training.config import ConfigError, load_config, save_config
from t2ifast.training.gan_int_cls import GANINTCLSTask
from t2ifast.training.loop import TrainingDiverged, train
from t2ifast.training.runtime import Runtime
from t2ifast.training.stackgan import StackGANTask, build_stage1_generator

TINY = [
    "gan.ngf=8",
    "gan.ndf=8",
    "gan.z_dim=16",
    "gan.projection_dim=8",
    "text.embedding_dim=32",
    "text.word_embedding_dim=16",
    "train.batch_size=8",
    "data.workers=0",
    "data.loader=torch",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = generate_synthetic(tmp_path_factory.mktemp("data"), num_images=48, size=64, seed=3)
    return folder, open_dataset(folder, "train")


def _embed(dataset, dim=32):
    torch.manual_seed(11)
    return DAMSMSentenceEmbeddings(TextEncoder(len(dataset.vocabulary), embedding_dim=16, hidden_dim=dim))


def _loader(dataset, batch_size=8):
    return make_loader(dataset, batch_size, backend="torch", num_workers=0, last_batch="drop", seed=5)


def test_generator_and_style_encoder_shapes():
    generator = TextConditionedGenerator(24, z_dim=10, projection_dim=6, ngf=4)
    images = generator(torch.randn(3, 10), torch.randn(3, 24))
    assert images.shape == (3, 3, 64, 64) and images.abs().max() <= 1
    images.sum().backward()
    assert all(p.grad is not None for p in generator.parameters())
    assert StyleEncoder(z_dim=10, ndf=4)(images.detach()).shape == (3, 10)
    with pytest.raises(ValueError, match=r"z must be \[B, z_dim=10\], got shape \(3, 9\)"):
        generator(torch.randn(3, 9), torch.randn(3, 24))
    with pytest.raises(ValueError, match=r"embedding must be \[B=3, embedding_dim=24\]"):
        generator(torch.randn(3, 10), torch.randn(2, 24))
    with pytest.raises(ValueError, match="ngf must be a positive integer"):
        TextConditionedGenerator(24, ngf=0)


@pytest.mark.parametrize("model", ["gan", "gan-cls", "gan-int", "gan-int-cls"])
def test_steps_lower_the_discriminator_loss_on_a_fixed_batch(shapes, model):
    _, dataset = shapes
    # D learns faster than G here (the default lr_g would let G keep up on one fixed batch): this checks D's step
    config = load_config(
        overrides=[*TINY, f"model={model}", "train.lr_d=1e-3", "train.lr_g=2e-4", "gan.damsm_weight=0"]
    )
    torch.manual_seed(0)
    task = GANINTCLSTask(config, _embed(dataset), Runtime(torch.device("cpu")))
    batch = next(iter(_loader(dataset)))
    losses = [task.train_step(batch) for _ in range(12)]
    assert ("d_wrong" in losses[0]) == model.endswith("cls")
    first, last = losses[0]["d_loss"].item(), sum(step["d_loss"].item() for step in losses[-3:]) / 3
    assert all(math.isfinite(v.item()) for step in losses for v in step.values())
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("model", ["gan-int-cls", "gan"])
def test_gan_damsm_weight_adds_the_damsm_loss_of_the_fakes_to_the_generator_loss(shapes, model):
    _, dataset = shapes
    config = load_config(overrides=[*TINY, f"model={model}", "gan.damsm_weight=2.5"])
    torch.manual_seed(0)
    embed = _embed(dataset)
    image_encoder = ImageEncoder(32, input_size=32, width=4)
    task = GANINTCLSTask(config, embed, Runtime(torch.device("cpu")), image_encoder=image_encoder)
    assert not image_encoder.training and not any(p.requires_grad for p in image_encoder.parameters())
    batch = next(iter(_loader(dataset)))
    generated = []
    generate = task._generate
    task._generate = lambda z, text: generated.append(generate(z, text)) or generated[-1]
    losses = task.train_step(batch)
    fakes = generated[0][: config.train.batch_size].detach()
    words, sentence = embed.features(batch)
    # the terms are AttnGAN's DAMSM losses of the caption fakes (not the interpolated ones), each summed both ways
    word = damsm_word_loss(words, batch.caption_lengths, image_encoder(fakes)[0].flatten(2), class_ids=batch.class_ids)
    expected_sentence = damsm_sentence_loss(image_encoder(fakes)[1], sentence, class_ids=batch.class_ids)
    torch.testing.assert_close(losses["g_damsm_word"], word.images + word.captions)
    torch.testing.assert_close(losses["g_damsm_sentence"], expected_sentence.images + expected_sentence.captions)
    total = losses["g_adversarial"] + 2.5 * (losses["g_damsm_word"] + losses["g_damsm_sentence"])
    torch.testing.assert_close(losses["g_loss"].detach(), total)
    assert all(math.isfinite(v.item()) for v in losses.values())


def test_gan_damsm_weight_without_an_image_encoder_is_refused(shapes):
    _, dataset = shapes
    config = load_config(overrides=[*TINY, "gan.damsm_weight=1"])
    with pytest.raises(ValueError, match=r"gan\.damsm_weight > 0 needs the DAMSM"):
        GANINTCLSTask(config, _embed(dataset), Runtime(torch.device("cpu")))


def test_without_gan_damsm_weight_the_generator_loss_is_adversarial_only(shapes):
    _, dataset = shapes
    config = load_config(overrides=[*TINY, "gan.damsm_weight=0"])
    task = GANINTCLSTask(config, _embed(dataset), Runtime(torch.device("cpu")), image_encoder=ImageEncoder(32))
    assert task.damsm is None
    assert "g_damsm_word" not in task.train_step(next(iter(_loader(dataset))))


@pytest.mark.parametrize("model", ["gan-int-cls", "gan"])
def test_the_generator_loss_scores_interpolated_fakes_in_their_own_discriminator_call(shapes, model):
    """D's BatchNorm normalises each call's batch: the B fakes of the captions and the B/2 interpolated ones are
    scored in separate calls (as in the authors' code), never as one batch of 3B/2."""
    _, dataset = shapes
    config = load_config(overrides=[*TINY, f"model={model}", "gan.damsm_weight=0"])  # the adversarial loss alone
    torch.manual_seed(0)
    task = GANINTCLSTask(config, _embed(dataset), Runtime(torch.device("cpu")))
    batch = next(iter(_loader(dataset)))
    calls, score = [], task.discriminator.forward

    def recorded(images, embedding):
        logits = score(images, embedding)
        calls.append((images.detach().clone(), embedding.clone(), logits.detach().clone()))
        return logits

    task.discriminator.forward = recorded
    g_loss = task.train_step(batch)["g_loss"]
    b = config.train.batch_size
    assert [len(images) for images, _, _ in calls] == ([b, b // 2] if model == "gan-int-cls" else [b])
    # each call's logits are those of D on that group alone, and the loss is over all of them
    task.discriminator.forward = score
    for images, embedding, logits in calls:
        expected = score(images, embedding)  # D in training mode: this group's own batch statistics
        torch.testing.assert_close(logits, expected.detach())
    expected_loss = torch.nn.functional.softplus(-torch.cat([logits for _, _, logits in calls])).mean()
    torch.testing.assert_close(g_loss.detach(), expected_loss)


def test_weights_that_do_not_fit_their_module_are_a_clear_error(tmp_path):
    save_weights(torch.nn.Linear(2, 3), tmp_path / "generator.safetensors")
    loaded = load_weights(torch.nn.Linear(2, 3), tmp_path / "generator.safetensors")
    assert loaded.weight.shape == (3, 2)
    with pytest.raises(ValueError, match=r"(?s)generator.safetensors does not fit the Linear .*size mismatch"):
        load_weights(torch.nn.Linear(2, 4), tmp_path / "generator.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=r"garbage.safetensors is not a safetensors file"):
        load_weights(torch.nn.Linear(2, 3), tmp_path / "garbage.safetensors")


def test_a_folder_that_is_no_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run folder .*nowhere does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"file.png is a file; give the run folder"):
        load_run(tmp_path / "file.png")
    with pytest.raises(FileNotFoundError, match=r"is not a t2ifast run folder \(no config.yaml\)"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("model: [gan\n")
    with pytest.raises(ValueError, match=r"config.yaml is not valid YAML"):
        load_run(tmp_path)


def _recording(task):
    seen = []
    step = task.train_step

    def recorded(batch):
        losses = step(batch)
        seen.append({k: v.item() for k, v in losses.items()})
        return losses

    task.train_step = recorded
    return seen


def _task(dataset):
    """A GAN-INT-CLS task at the default settings (the DAMSM loss in G's objective included), tiny."""
    config = load_config(overrides=TINY)
    torch.manual_seed(0)
    image_encoder = ImageEncoder(32, input_size=32, width=4)
    return GANINTCLSTask(config, _embed(dataset), Runtime(torch.device("cpu")), image_encoder=image_encoder)


def test_damsm_pretraining_with_contrast_groups(tmp_path_factory, tmp_path, monkeypatch):
    folder = generate_synthetic(tmp_path_factory.mktemp("contrast"), num_images=300, size=32, seed=3, workers=1)
    dataset = open_dataset(folder, "train")
    config = load_config(overrides=[*TINY, "text.pretrain_contrast=shape", "text.pretrain_contrast_group=3"])
    contrast = contrast_groups(config, folder, dataset)
    attributes = load_attributes(folder)
    group = contrast.draw(np.random.default_rng(0), 2)  # one group: every pool has two values or more
    records = [attributes[dataset.keys[i]] for i in group]
    assert len({r["shape"] for r in records}) == 2
    assert all(len({r[name] for r in records}) == 1 for name in ("colour", "size", "position", "background"))
    # the pretrained DAMSM is cached under a key that names the contrast: a DAMSM pretrained without is not reused
    plain = load_config(overrides=TINY)
    assert damsm_cache_folder(config, folder) != damsm_cache_folder(plain, folder)
    config.text.pretrain_steps, config.text.pretrain_batch_size = 2, 8
    loaders = []
    monkeypatch.setattr(
        train_module, "make_loader", lambda *a, **k: loaders.append(make_loader(*a, **k)) or loaders[-1]
    )
    damsm = pretrain_damsm(config, folder, dataset, Runtime(torch.device("cpu")), tmp_path, resume=False)
    assert all(torch.isfinite(p).all() for p in damsm.parameters())
    assert len(loaders) == 1 and loaders[0]._sampler.contrast.vary == "shape"


def test_resume_gives_the_same_next_steps(shapes, tmp_path):
    _, dataset = shapes  # 38 training images: 4 batches of 8 per epoch, so 6 steps cross an epoch boundary
    options = {"log_every": 1, "checkpoint_every": 3, "sample_every": 100}
    runtime = Runtime(torch.device("cpu"))

    torch.manual_seed(1)
    whole = _task(dataset)
    whole_losses = _recording(whole)
    train(whole, _loader(dataset), runtime, out_dir=tmp_path / "whole", steps=6, **options)

    torch.manual_seed(1)
    first = _task(dataset)
    train(first, _loader(dataset), runtime, out_dir=tmp_path / "split", steps=3, **options)
    torch.manual_seed(99)  # whatever happens in between, resume restores every generator
    second = _task(dataset)
    second_losses = _recording(second)
    train(second, _loader(dataset), runtime, out_dir=tmp_path / "split", steps=6, resume=True, **options)
    assert len(second_losses) == 3
    assert second_losses == whole_losses[3:]
    for name, tensor in whole.state_dict()["generator"].items():
        torch.testing.assert_close(second.state_dict()["generator"][name], tensor, rtol=0, atol=0)


def test_a_nan_loss_stops_the_run_and_keeps_what_it_reached(shapes, tmp_path):
    _, dataset = shapes
    task = _task(dataset)
    embed, calls = task.embed, []

    class Poisoned:  # the text features turn NaN after a few calls (the task encodes its captions once a step)
        rescale = embed.rescale

        def features(self, batch, which="right"):
            calls.append(which)
            words, sentence = embed.features(batch, which)
            return (words, sentence * float("nan")) if len(calls) > 8 else (words, sentence)

        def __call__(self, batch, which="right"):
            calls.append(which)
            out = embed(batch, which)
            return out * float("nan") if len(calls) > 8 else out

    task.embed = Poisoned()
    runtime = Runtime(torch.device("cpu"))
    with pytest.raises(
        TrainingDiverged, match=r"a loss is not finite at step 6 \(d_fake=nan.*checkpoint-000000004\.pt \(resume"
    ):
        train(task, _loader(dataset), runtime, out_dir=tmp_path, steps=10, log_every=2, checkpoint_every=4)
    folder = tmp_path / "checkpoints" / "gan"
    assert (folder / "diverged-000000006.pt").is_file()
    assert checkpoint.latest_checkpoint(folder).name == "checkpoint-000000004.pt"  # never a diverged state


def test_a_time_budget_stops_the_run_at_the_first_step_past_it_with_a_checkpoint(shapes, tmp_path, monkeypatch):
    _, dataset = shapes
    task = _task(dataset)
    clock = [100.0]  # each training step takes one second of this clock
    monkeypatch.setattr(loop, "monotonic", lambda: clock[0])
    step = task.train_step

    def one_second_step(batch):
        clock[0] += 1.0
        return step(batch)

    task.train_step = one_second_step
    runtime = Runtime(torch.device("cpu"))
    options = {"log_every": 2, "checkpoint_every": 100, "sample_every": 100}
    train(task, _loader(dataset), runtime, out_dir=tmp_path, steps=50, time_limit_s=4.5, **options)
    assert clock[0] == 105.0  # 4 s spent after step 4 (within budget), 5 s after step 5: stop there
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints" / "gan").name == "checkpoint-000000005.pt"


def test_under_torchrun_the_time_budget_is_agreed_at_log_steps(monkeypatch):
    """Any rank out of time stops them all, at a log step, where they agree through one all_reduce(MAX)."""

    class TwoRanks:
        distributed, device = True, torch.device("cpu")

    reduced = []

    def another_rank_is_out_of_time(flag, op):
        reduced.append(op)
        flag.fill_(1.0)

    monkeypatch.setattr(loop.dist, "all_reduce", another_rank_is_out_of_time)
    monkeypatch.setattr(loop, "monotonic", lambda: 10.0)
    started = 9.0  # this rank has spent 1 s of a 5 s budget
    assert not loop._out_of_time(started, 5.0, TwoRanks(), step=3, log_every=2) and reduced == []
    assert loop._out_of_time(started, 5.0, TwoRanks(), step=4, log_every=2) and reduced == [loop.dist.ReduceOp.MAX]
    assert not loop._out_of_time(started, None, TwoRanks(), step=4, log_every=2)


def _train_command(out, cache, *extra):
    return [
        sys.executable, "-m", "t2ifast.train", "--out", str(out), "--steps", "3",
        *(item for override in TINY for item in ("--set", override)),
        "--set", f"train.cache_dir={cache}", "--set", "data.synthetic_images=48",
        "--set", "text.pretrain_steps=3", "--set", "text.pretrain_batch_size=8", "--set", "gan.style_steps=2",
        "--set", "eval.max_samples=16", "--set", "eval.classifier_steps=5",
        "--set", "eval.r_precision_images=8", "--set", "eval.r_precision_splits=2",
        "--set", "eval.r_precision_candidates=5", *extra,
    ]  # fmt: skip


def _run(command, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, **kwargs)


def test_the_main_job_end_to_end(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    result = _run(_train_command(out, cache))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.yaml", "vocabulary.json", "text_encoder.safetensors", "image_encoder.safetensors",
                 "generator.safetensors", "style_encoder.safetensors", "samples.png", "interpolation.png",
                 "style_transfer.png", "caption_accuracy.png", "evaluation.json"):  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "evaluation.json").read_text())
    assert 0.0 <= report["caption_accuracy"]["generated"]["colour"] <= 1.0
    assert report["r_precision"]["count"] == 8 and len(report["r_precision"]["per_split"]) == 2
    assert (out / "checkpoints" / "gan" / "checkpoint-000000003.pt").is_file()
    assert any((out / "tensorboard" / "gan").iterdir())

    sample = _run([sys.executable, "-m", "t2ifast.sample", str(out), "a red circle", "a blue star", "-n", "2",
                   "--out", str(tmp_path / "s.png")])  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert (tmp_path / "s.png").is_file()
    unknown = _run([sys.executable, "-m", "t2ifast.sample", str(out), "zzz qqq", "--out", str(tmp_path / "u.png")])
    assert unknown.returncode != 0 and "has no word of the model's vocabulary" in unknown.stderr
    evaluation = _run([sys.executable, "-m", "t2ifast.evaluate", str(out), "--max-samples", "8",
                       "--r-precision", "--r-images", "8", "--r-splits", "2", "--r-candidates", "5",
                       "--damsm-attributes", "4"])  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert {"caption_accuracy", "r_precision", "damsm_attributes"} <= set(report)
    assert report["damsm_attributes"]["count"] == 4
    assert set(report["damsm_attributes"]["accuracy"]) == {"sentence", "word"}


MULTI_STAGE = {  # model -> (settings, checkpoint folders, pictures)
    "stackgan": (["stackgan.stage2_steps=2", "stackgan.condition_dim=8"], ["stackgan-stage1", "stackgan-stage2"],
                 ["samples.png", "stage1_generator.safetensors"]),
    "attngan": (["attngan.stages=3", "attngan.condition_dim=8"], ["attngan"], ["samples.png", "attention.png"]),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(MULTI_STAGE))
def multi_stage_run(request, tmp_path_factory):
    """(model, run folder, cache folder) of a tiny --model stackgan|attngan run on the synthetic set at 256×256."""
    model = request.param
    out, cache = tmp_path_factory.mktemp(model) / "run", tmp_path_factory.mktemp(f"{model}-cache")
    overrides = [item for setting in MULTI_STAGE[model][0] for item in ("--set", setting)]
    result = _run(_train_command(out, cache, "--model", model, "--steps", "2", "--batch-size", "4", *overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    return model, out, cache


def test_the_multi_stage_models_end_to_end(multi_stage_run):
    """--model stackgan|attngan on the synthetic set at 256×256: every phase, the pictures, the evaluation."""
    model, out, cache = multi_stage_run
    _, checkpoints, pictures = MULTI_STAGE[model]
    for name in ("generator.safetensors", "image_encoder.safetensors", "evaluation.json", *pictures):
        assert (out / name).is_file(), name
    for name in checkpoints:
        assert (out / "checkpoints" / name / "checkpoint-000000002.pt").is_file(), name
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report) == {"caption_accuracy", "r_precision"}
    assert next((cache / "synthetic").glob("shapes-256px-*")).is_dir()  # generated at the last stage's size


def _last_task(model, out):
    """The run's last training task, restored from its final checkpoint."""
    config = load_config(out / "config.yaml")
    runtime = Runtime(torch.device("cpu"))
    text_encoder, image_encoder = load_damsm_encoders(out)
    if model == "stackgan":
        embed = DAMSMSentenceEmbeddings(text_encoder)
        stage1 = build_stage1_generator(config, embed.embedding_dim)
        task = StackGANTask(config, embed, runtime, stage=2, stage1_generator=stage1)
    else:
        task = AttnGANTask(config, text_encoder, image_encoder, runtime)
    state = checkpoint.load_checkpoint(out / "checkpoints" / task.name / "checkpoint-000000002.pt", restore_rng=False)
    task.load_state_dict(state["task"])
    return task


def test_a_multi_stage_run_folder_generates_what_its_task_samples(multi_stage_run):
    model, out, _ = multi_stage_run
    run = load_run(out)
    task = _last_task(model, out)
    captions = ["a red circle on white", "a big blue star", "a small green square on a black background"]
    batch = run.encode_captions(captions)
    z = torch.randn(len(captions), run.z_dim, generator=torch.Generator().manual_seed(0))
    expected = task.sample(batch, z)
    assert expected.shape == (3, 3, 256, 256)
    torch.testing.assert_close(run.generate(batch, z), expected, rtol=0, atol=0)
    torch.testing.assert_close(run.generate_captions(captions, z), expected, rtol=0, atol=0)
    if model == "stackgan":  # generator.safetensors holds both stages, Stage I as stage1_generator.safetensors
        stage1 = load_file(out / "stage1_generator.safetensors")
        torch.testing.assert_close(run.generator.stage1.state_dict(), stage1, rtol=0, atol=0)
        with pytest.raises(ValueError, match="return_attention needs an attngan run; this one has model stackgan"):
            run.generate(batch, z, return_attention=True)
    else:
        images, attention = run.generate(batch, z, return_attention=True)
        expected_images, expected_attention = task.sample(batch, z, return_attention=True)
        torch.testing.assert_close(images, expected_images, rtol=0, atol=0)
        assert [tuple(a.shape) for a in attention] == [(3, batch.captions.shape[1], s, s) for s in (64, 128)]
        torch.testing.assert_close(attention, expected_attention, rtol=0, atol=0)


def test_sample_and_evaluate_a_multi_stage_run_folder(multi_stage_run, tmp_path):
    model, out, cache = multi_stage_run
    attention = ["--attention", str(tmp_path / "attention.png")] if model == "attngan" else []
    drawn = _run([sys.executable, "-m", "t2ifast.sample", str(out), "a red circle", "a blue star", "-n", "2",
                  "--device", "cpu", "--out", str(tmp_path / "s.png"), *attention])  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert (tmp_path / "s.png").is_file() and (model != "attngan" or (tmp_path / "attention.png").is_file())
    common = [str(out), "a red circle", "--device", "cpu", "--out", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit, match=rf"--interpolate needs a gan-int-cls-family run .*--model {model}"):
        sample.main([common[0], *common[2:], "--interpolate", "a red circle", "a blue star"])  # no captions
    with pytest.raises(SystemExit, match=rf"--style-from needs a run with a style encoder .*--model {model}"):
        sample.main([*common, "--style-from", str(tmp_path / "s.png")])
    if model == "stackgan":
        with pytest.raises(SystemExit, match=r"--attention needs an attngan run .*--model stackgan"):
            sample.main([*common, "--attention", str(tmp_path / "a.png")])
    assert not (tmp_path / "x.png").exists()

    evaluation = _run([sys.executable, "-m", "t2ifast.evaluate", str(out), "--max-samples", "8", "--device", "cpu",
                       "--r-precision", "--r-images", "8", "--r-splits", "2", "--r-candidates", "5"])  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert 0.0 <= report["caption_accuracy"]["generated"]["colour"] <= 1.0 and report["r_precision"]["count"] == 8
    sets = [p.name for p in (cache / "synthetic").iterdir()]
    assert len(sets) == 1 and sets[0].startswith("shapes-256px-"), sets  # the set the run trained on, no other


def test_bad_configuration_is_a_clear_error(tmp_path):
    result = _run([sys.executable, "-m", "t2ifast.train", "--out", str(tmp_path), "--set", "gan.ngf=0"])
    assert result.returncode != 0
    assert "bad configuration: gan.ngf must be at least 1, got 0" in result.stderr


def _refused(argv):
    with pytest.raises(SystemExit) as exited:
        train_module.main(argv)
    return str(exited.value.code)


def test_a_folder_holding_a_run_is_never_overwritten_without_resume(tmp_path):
    # the old run's config, checkpoint and weights; a new run there would rewrite config.yaml (breaking the
    # weights it describes) and its own early checkpoints would be pruned in favour of the old run's later ones
    out = tmp_path / "run"
    (out / "checkpoints" / "gan").mkdir(parents=True)
    (out / "checkpoints" / "gan" / "checkpoint-000000900.pt").write_bytes(b"old")
    (out / "config.yaml").write_text("model: gan\n")
    message = _refused(["--out", str(out), "--model", "gan-int-cls", "--device", "cpu"])
    assert "train.out=" in message and "already holds a run (checkpoints/gan/checkpoint-000000900.pt" in message
    assert "--resume" in message
    assert (out / "config.yaml").read_text() == "model: gan\n"
    (out / "checkpoints" / "gan" / "checkpoint-000000900.pt").unlink()
    save_weights(torch.nn.Linear(2, 3), out / "generator.safetensors")
    assert "already holds a run (generator.safetensors" in _refused(["--out", str(out), "--device", "cpu"])
    (tmp_path / "file").write_text("x")
    assert "train.out=" in _refused(["--out", str(tmp_path / "file"), "--device", "cpu"])


def test_asking_for_a_gpu_that_is_not_there_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = _refused(["--out", str(tmp_path / "run"), "--device", "cuda"])
    assert message == "t2ifast.train: bad configuration: train.device=cuda was asked for, but torch sees no CUDA GPU"


def test_missing_input_files_stop_the_run_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    for flag in ("--text-encoder", "--set"):
        value = str(tmp_path / "missing.safetensors")
        argv = [flag, value] if flag == "--text-encoder" else [flag, f"stackgan.stage1_generator={value}"]
        message = _refused(["--out", str(out), "--device", "cpu", *argv])
        assert "missing.safetensors: no such file" in message
        assert not out.exists()


def test_a_given_text_encoder_that_is_no_weights_file_is_named(tmp_path):
    (tmp_path / "encoder.safetensors").write_text("a text file")
    argv = ["--out", str(tmp_path / "run"), "--device", "cpu", "--text-encoder", str(tmp_path / "encoder.safetensors"),
            "--set", f"train.cache_dir={tmp_path / 'cache'}", "--set", "data.synthetic_images=20"]  # fmt: skip
    message = _refused(argv)
    assert message.startswith("t2ifast.train: text.encoder: weights file ")
    assert "encoder.safetensors is not a safetensors file (" in message  # then safetensors' own reason


def test_resume_takes_the_run_folders_config_and_refuses_changes_its_checkpoints_would_not_fit(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    saved = load_config(overrides=["gan.ngf=8", "gan.ndf=8", f"train.out={out}", "train.steps=5"])
    save_config(saved, out / "config.yaml")
    resumed = train_module.resumed_config
    args = train_module.parse_args(["--out", str(out), "--resume", "--steps", "9", "--set", "eval.max_samples=10"])
    config = resumed(load_config(None, train_module.overrides_of(args)), args)
    assert (config.gan.ngf, config.gan.ndf, config.train.steps, config.eval.max_samples) == (8, 8, 9, 10)
    args = train_module.parse_args(["--out", str(out), "--resume", "--ngf", "16", "--set", "train.lr_g=1e-3"])
    with pytest.raises(ConfigError, match=r"changes gan.ngf: 8 -> 16, train.lr_g: 0.0004 -> 0.001; a resumed run may"):
        resumed(load_config(None, train_module.overrides_of(args)), args)
    fresh = train_module.parse_args(["--out", str(tmp_path / "new"), "--resume", "--ngf", "16"])
    assert resumed(load_config(None, train_module.overrides_of(fresh)), fresh).gan.ngf == 16  # nothing to resume yet


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    command = _train_command(
        out, cache, "--set", "eval.caption_accuracy=false", "--steps", "400", "--set", "train.checkpoint_every=2"
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = out / "checkpoints" / "gan"
    deadline = time.time() + 300
    while not (folder.is_dir() and len(checkpoint.list_checkpoints(folder)) >= 2) and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    reached = checkpoint.latest_checkpoint(folder)
    step = checkpoint.load_checkpoint(reached, restore_rng=False)["step"]  # the newest file is complete
    assert step < 400
    resumed = _run([*command[:-4], "--steps", str(step + 2), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {reached} at step {step}" in resumed.stderr
    assert checkpoint.latest_checkpoint(folder).name == f"checkpoint-{step + 2:09d}.pt"


def test_distributed_data_parallel_on_cpu_with_two_processes(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    command = _train_command(out, cache, "--set", "eval.caption_accuracy=false")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = _run([*torchrun, *command[1:]])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "generator.safetensors").is_file()
    state = checkpoint.load_checkpoint(out / "checkpoints" / "gan" / "checkpoint-000000003.pt", restore_rng=False)
    # rank 0's shard holds 19 of the 38 training images: 2 batches of 8 an epoch, so step 3 is epoch 1, batch 1
    assert (state["loader"]["epoch"], state["loader"]["batch"]) == (1, 1)

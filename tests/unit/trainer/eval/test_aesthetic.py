"""The aesthetic score (eval/aesthetic.py): a random head of the LAION architecture with known answers,
and its refusals of files that are not that head."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from zthumb_contract.scale_sweep import AESTHETIC, OUT_OF_DISTRIBUTION
from zthumb_trainer.eval.aesthetic import (
    AestheticError,
    AestheticHead,
    aesthetic_block,
    aesthetic_scores,
    load_head,
    save_random_head,
)
from zthumb_trainer.eval.config import EvalConfig, Sample

WIDTH = 32


def test_the_head_has_the_published_tensor_names_and_shapes(tmp_path):
    """LAION's state dict: layers.0 (768 -> 1024), .2, .4, .6, .7 (16 -> 1); dropouts between."""
    head = AestheticHead(768)
    shapes = {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}
    assert shapes == {
        "layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
        "layers.6.weight": (16, 64), "layers.6.bias": (16,),
        "layers.7.weight": (1, 16), "layers.7.bias": (1,),
    }  # fmt: skip


def test_known_answers(tmp_path):
    path = save_random_head(tmp_path / "head.safetensors", WIDTH)
    head = load_head(path, WIDTH)
    embeddings = torch.nn.functional.normalize(
        torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(0))
    )
    scores = aesthetic_scores(head, embeddings)
    # Identical embeddings score the same; the batch scores as one embedding at a time (eval mode:
    # no dropout); and the head is the affine map it was saved as.
    same = aesthetic_scores(head, torch.stack([embeddings[0], embeddings[0]]))
    assert same[0] == pytest.approx(same[1], abs=1e-6) and same[0] == pytest.approx(scores[0], abs=1e-5)
    assert [aesthetic_scores(head, row[None])[0] for row in embeddings] == pytest.approx(scores, abs=1e-5)
    # A head whose last bias is 5 and last weight 0 gives 5 for any image.
    state = load_file(str(path))
    state["layers.7.weight"].zero_()
    state["layers.7.bias"].fill_(5.0)
    constant = tmp_path / "five.safetensors"
    save_file(state, str(constant))
    assert aesthetic_scores(load_head(constant, WIDTH), embeddings) == pytest.approx([5.0] * 3)


def test_the_block_per_scale_and_the_drop(tmp_path):
    state = load_file(str(save_random_head(tmp_path / "head.safetensors", WIDTH)))
    # The score is the first coordinate of the embedding, times 4 (a head that is exact to check).
    for name in state:
        state[name].zero_()
    state["layers.0.weight"][0, 0] = 1.0
    for index in (2, 4, 6):
        state[f"layers.{index}.weight"][0, 0] = 1.0
    state["layers.7.weight"][0, 0] = 4.0
    save_file(state, str(tmp_path / "exact.safetensors"))
    head = load_head(tmp_path / "exact.safetensors", WIDTH)
    embeddings = torch.zeros(6, WIDTH)
    embeddings[:, 0] = torch.tensor([1.0, 0.5, 0.75, 0.25, 2.0, 0.0])
    config = EvalConfig(
        server_url="http://x", output=tmp_path, run_name="r", lora_path="r", scales=[0.0, 0.8]
    )
    samples = [Sample(0, "p", seed, scale, None, 0.1, {}) for seed in (0, 1) for scale in (0.0, 0.8)]
    # An out-of-distribution prompt: scored for the sweep, but not in the block the gate reads.
    samples += [Sample(0, "q", 0, scale, None, 0.1, {}, group=OUT_OF_DISTRIBUTION) for scale in (0.0, 0.8)]
    block = aesthetic_block(config, head, samples, embeddings)
    assert block.by_scale == {"0": {"aesthetic": 3.5}, "0.8": {"aesthetic": 1.5}}  # (4+3)/2, (2+1)/2
    assert block.aesthetic_drop == pytest.approx(2.0)
    assert [sample.scores[AESTHETIC] for sample in samples] == [4.0, 2.0, 3.0, 1.0, 8.0, 0.0]


def test_a_head_for_other_embeddings_or_another_file_is_refused_naming_the_field(tmp_path):
    path = save_random_head(tmp_path / "head.safetensors", 768)
    with pytest.raises(
        AestheticError, match=r"spec\.eval\.aesthetic: the head takes 768-wide embeddings, .* gives 32"
    ):
        load_head(path, 32)
    state = load_file(str(path))
    del state["layers.7.bias"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(AestheticError, match=r"spec\.eval\.aesthetic: .* is not the LAION aesthetic head"):
        load_head(tmp_path / "cut.safetensors", 768)
    save_file({"other": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AestheticError, match=r"no 2-D layers\.0\.weight"):
        load_head(tmp_path / "other.safetensors", 768)
    (tmp_path / "pickle.pth").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(AestheticError, match="is not a safetensors file"):
        load_head(tmp_path / "pickle.pth", 768)

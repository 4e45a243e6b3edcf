"""compile_train: the compiled training step of a module against eager PyTorch training."""

import pytest
import torch
import transformers
from zoo import families, nanogpt

import cgc
from cgc import models
from cgc.errors import ModelError
from cgc.training import SGD, AdamW, Schedule
from cgc.training.check import next_token_loss

STEPS = 4


def _eager(module, batches, optimizer, schedule, loss_of):
    opt = optimizer.to_torch(optimizer.torch_groups(module.named_parameters()))
    lr = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    losses = []
    for batch in batches:
        loss = loss_of(module, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(module.parameters()), 1.0)
        opt.step()
        lr.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("backend", ["onnxruntime", "interpreter"])
def test_adamw_steps_match_eager(backend: str) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 97, (2, 16), generator=gen) for _ in range(STEPS)]
    optimizer, schedule = AdamW(lr=2e-3), Schedule("linear", warmup=1, total=STEPS)
    module = models.build("tiny-111m")
    trainer = cgc.compile_train(module, batches[0], optimizer, backend=backend, schedule=schedule)
    got = [trainer.step(b) for b in batches]
    want = _eager(
        module.train(), batches, optimizer, schedule, lambda m, b: next_token_loss(m(b), b)
    )
    assert got == pytest.approx(want, rel=1e-5)
    assert trainer.steps == STEPS and trainer.last["lr"] == pytest.approx(2e-3 * 0.4)
    params = trainer.params()
    for name, p in module.named_parameters():
        # the key bias has a zero gradient in exact arithmetic: Adam moves it on rounding noise
        if name.endswith("c_attn.bias"):
            p, got_p = p[:64], params[name][:64]  # the query third
        else:
            got_p = params[name]
        torch.testing.assert_close(got_p, p.detach(), rtol=0, atol=3e-4 * float(p.abs().max()))


def _gpt2_without_dropout() -> torch.nn.Module:
    """GPT-2's Conv1D weights are [in, out]: inference stores them transposed for linear."""
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=families.VOCAB, pad_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


@pytest.mark.parametrize("name", ["llama_gqa", "phi", "falcon", "gpt2"])
def test_hugging_face_families_train_as_eager(name: str) -> None:
    """Embeddings with padding_idx = pad_token_id (0) give the pad row no gradient, and every
    weight trains under its own name and shape (GPT-2's Conv1D ones too), over 3 clipped steps."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(1, families.VOCAB, (2, 16), generator=gen) for _ in range(3)]
    for b in batches:
        b[:, 5] = 0  # every batch looks the padding row up
    # SGD: an update proportional to the gradient, so rounding noise stays noise (Adam turns a
    # gradient that is zero up to rounding into a full step)
    optimizer, schedule = SGD(lr=0.1, momentum=0.9), Schedule("constant")
    hf = _gpt2_without_dropout() if name == "gpt2" else families.hf_model(name)
    module = families.CausalLM(hf)
    trainer = cgc.compile_train(module, batches[0], optimizer, schedule=schedule)
    got = [trainer.step(b) for b in batches]
    want = _eager(
        module.train(), batches, optimizer, schedule, lambda m, b: next_token_loss(m(b), b)
    )
    assert got == pytest.approx(want, rel=1e-5)
    params = trainer.params()
    assert sorted(params) == sorted(n for n, _ in module.named_parameters())
    for n, p in module.named_parameters():
        torch.testing.assert_close(params[n], p.detach(), rtol=0, atol=1e-4 * float(p.abs().max()))


def test_a_model_with_its_own_loss_trains_with_sgd() -> None:
    module, (ids,) = nanogpt.get_model()
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    optimizer, schedule = SGD(lr=0.05, momentum=0.9), Schedule("constant")
    trainer = cgc.compile_train(module, (x, y), optimizer, schedule=schedule)
    got = [trainer.step(x, y) for _ in range(3)]
    want = _eager(module.train(), [(x, y)] * 3, optimizer, schedule, lambda m, b: m(*b)[1])
    assert got == pytest.approx(want, rel=1e-5)
    assert got[2] < got[0]
    assert trainer.evaluate(x, y) == pytest.approx(float(module(x, y)[1]), rel=1e-5)


def test_state_dict_round_trip_and_a_checkpoint_transformers_loads(tmp_path) -> None:
    from transformers import GPT2LMHeadModel

    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    trainer = cgc.compile_train(models.build("tiny-111m"), ids)
    state = trainer.state_dict()
    assert int(state["step"]) == 0 and "exp_avg_sq.transformer.wte.weight" in state
    first = trainer.step(ids)
    trainer.load_state_dict(state)
    assert trainer.step(ids) == first  # the same step again, from the same state
    folder = trainer.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json",
    ]  # fmt: skip
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    ours = models.load_hf_checkpoint(folder)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ours.transformer.wte.weight, trainer.params()["transformer.wte.weight"]
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "interpreter"])
def test_in_place_training_updates_the_module_as_torch_optim_does(backend: str) -> None:
    module = models.build("tiny-111m")
    before = module.transformer.h[0].mlp.c_fc.weight.detach().clone()
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    trainer = cgc.compile_train(module, ids, backend=backend, in_place=True)
    trainer.step(ids)
    after = module.transformer.h[0].mlp.c_fc.weight.detach()
    assert not torch.equal(after, before)
    assert torch.equal(after, trainer.params()["transformer.h.0.mlp.c_fc.weight"])


class _NoParameters(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.ones(8, 4))  # a buffer is not trained

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.table).mean()


class _VectorLoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(8, 4)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (self.emb(ids).sum(-1) - targets).pow(2)  # per element, not reduced


def test_models_that_cannot_train_are_clear_errors() -> None:
    ids = torch.randint(0, 8, (2, 5))
    with pytest.raises(ModelError, match="no trainable parameters"):
        cgc.compile_train(_NoParameters(), ids)
    with pytest.raises(ModelError, match="returns no scalar loss .* must be 0-d"):
        cgc.compile_train(_VectorLoss(), (ids, ids.float()))

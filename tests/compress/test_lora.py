"""Low-rank adapters: start as the model, train only themselves, merge back exactly."""

import pytest
import torch
from torch import nn

from compress.lora import LoraConfig, LoraError, LoraLinear, add_lora, lora_state_dict, merge_lora


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.fc = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.q_proj(x) + self.v_proj(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Block(), Block()

    def forward(self, x):
        return self.encoder(x) + self.decoder(x)


def test_adapters_start_as_the_model_train_alone_and_merge_exactly():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(5, 8)
    before = net(x).detach()
    names = add_lora(net, LoraConfig(rank=2, alpha=4.0, modules=["decoder"]))
    assert names == ["decoder.q_proj", "decoder.v_proj"] and isinstance(net.decoder.q_proj, LoraLinear)
    assert torch.equal(net(x), before)  # B starts at zero
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"decoder.{m}.lora_{ab}" for m in ("q_proj", "v_proj") for ab in "ab"}
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    tuned = net(x).detach()
    assert not torch.allclose(tuned, before)
    assert set(lora_state_dict(net)) == trainable
    assert merge_lora(net) == 2 and isinstance(net.decoder.q_proj, nn.Linear)
    assert torch.allclose(net(x), tuned, atol=1e-6)  # the merged weights compute the same
    assert set(net.state_dict()) == set(Net().state_dict())


def test_bad_settings_are_named():
    with pytest.raises(LoraError, match="lora.rank must be >= 0"):
        LoraConfig(rank=-1)
    with pytest.raises(LoraError, match="no Linear layer named"):
        add_lora(Net(), LoraConfig(rank=2, targets=["k_proj"]))
    with pytest.raises(LoraError, match="exceeds the size of 'encoder.fc'"):
        add_lora(Net(), LoraConfig(rank=6, targets=["fc"]))
    assert add_lora(Net(), LoraConfig(rank=0)) == []

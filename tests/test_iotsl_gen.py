"""IoTSL's generator side (seed 002): the privacy accountant against dp-accounting, per-example
clipping of the gradient that reaches the generator, exact class counts from `generate`, generator
artifacts (round trip, tampering, privacy policy), Algorithm 2's pairing on the seed's examples, and
pre-training of the split CNN on generated data."""
import math

import numpy as np
import pytest
import torch

import dp_accounting
from dp_accounting import pld, rdp
from semifl.learn.iotsl import artifact, dp
from semifl.learn.iotsl.gan import Discriminator, Generator, generate, noise
from semifl.learn.iotsl.impute import Fill, impute, imputed_set
from semifl.learn.iotsl.pretrain import generated_dataset, pretrain
from semifl.learn.iotsl.train import train_generator
from semifl.models import get

SPLIT = get("splitcnn-mnist")   # IoTSL's split CNN and its cut


def _direct_epsilon(sigma, steps, q, delta, acc):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.compose(event).get_epsilon(delta)


# ---- privacy accounting
def test_epsilon_is_dp_accountings_and_monotone():
    assert dp.epsilon(1.1, 500, 64 / 1200, 1e-5) == pytest.approx(_direct_epsilon(1.1, 500, 64 / 1200, 1e-5, rdp.RdpAccountant()), rel=1e-12)
    assert dp.epsilon(1.1, 500, 64 / 1200, 1e-5, accountant="pld") == pytest.approx(
        _direct_epsilon(1.1, 500, 64 / 1200, 1e-5, pld.PLDAccountant()), rel=1e-9)
    by_steps = [dp.epsilon(1.0, s, 0.05) for s in (10, 100, 1000)]
    by_sigma = [dp.epsilon(s, 200, 0.05) for s in (0.8, 1.0, 2.0, 4.0)]
    assert by_steps == sorted(by_steps) and len(set(by_steps)) == 3
    assert by_sigma == sorted(by_sigma, reverse=True) and len(set(by_sigma)) == 4
    assert dp.epsilon(1.0, 100, 0.05, delta=1e-3) < dp.epsilon(1.0, 100, 0.05, delta=1e-6)
    assert dp.epsilon(0.0, 10, 0.05) == math.inf and dp.epsilon(1.0, 0, 0.05) == 0.0


# ---- sanitization
def test_sanitize_clips_each_example_and_adds_sigma_c_noise():
    g = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g *= torch.tensor([0.1, 0.5, 0.99, 2.0, 10.0, 100.0]).view(-1, 1, 1, 1) / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    s = dp.sanitize(g, clip=1.0, sigma=0.0)
    norms = s.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.tensor([0.1, 0.5, 0.99, 1.0, 1.0, 1.0]), atol=1e-5)
    assert torch.allclose(s[:3], g[:3])                                    # under C: untouched
    cos = torch.nn.functional.cosine_similarity(s.flatten(1), g.flatten(1))
    assert torch.allclose(cos, torch.ones(6), atol=1e-5)                   # clipping keeps the direction
    big = torch.zeros(400, 784)
    noisy = dp.sanitize(big, clip=0.5, sigma=2.0, generator=torch.Generator().manual_seed(1))
    assert float(noisy.std()) == pytest.approx(1.0, rel=0.02)              # N(0, sigma^2 C^2)


def test_generator_only_sees_clipped_discriminator_gradient():
    torch.manual_seed(0)
    gen, disc = Generator(dim=8), Discriminator(dim=8).eval()   # eval: spectral norm's u stays put
    z, y = noise(8), torch.arange(8) % 10
    raw = gen(z, y)
    raw.retain_grad()
    (-100 * disc(raw, y)).sum().backward()
    assert (raw.grad.flatten(1).norm(dim=1) > 1).all()                     # unsanitized: far above C
    gen.zero_grad()
    xf = dp.sanitized(gen(z, y), clip=1.0, sigma=0.0)
    xf.retain_grad()                                                       # retain_grad runs after the hook
    (-100 * disc(xf, y)).sum().backward()
    assert torch.allclose(xf.grad, dp.sanitize(raw.grad))
    assert (xf.grad.flatten(1).norm(dim=1) <= 1 + 1e-5).all()
    # the generator's gradient is the backprop of those clipped rows and nothing else from D
    hooked = [p.grad.clone() for p in gen.parameters()]
    gen.zero_grad()
    gen(z, y).backward(dp.sanitize(raw.grad))
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(hooked, gen.parameters()))


def test_dp_training_reports_the_accountants_epsilon():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (48, 784), dtype=np.uint8), np.repeat([3, 7], 24)
    tg = train_generator(x, y, steps=2, batch=16, n_critic=1, sigma=1.5, dim=8, seed=0)
    assert tg.histogram == [0, 0, 0, 24, 0, 0, 0, 24, 0, 0]
    assert tg.q == pytest.approx(16 / 48)
    assert tg.epsilon == pytest.approx(_direct_epsilon(1.5, 2, 16 / 48, 1e-5, rdp.RdpAccountant()))
    assert train_generator(x, y, steps=1, batch=16, n_critic=1, sigma=0.0, dim=8).epsilon == math.inf


# ---- generate
def test_generate_makes_exact_class_counts_in_unit_range():
    gen = Generator(dim=8)
    hist = [5, 0, 3, 0, 0, 0, 0, 0, 0, 7]
    x, y = generate(gen, hist, seed=4)
    assert x.shape == (15, 28, 28, 1) and x.dtype == np.float32
    assert np.bincount(y, minlength=10).tolist() == hist
    assert x.min() >= 0 and x.max() <= 1
    assert np.array_equal(x, generate(gen, hist, seed=4)[0]) and not np.array_equal(x, generate(gen, hist, seed=5)[0])
    assert generate(gen, [0] * 10)[0].shape == (0, 28, 28, 1)
    with pytest.raises(ValueError):
        generate(gen, [1, -1])


# ---- artifacts
@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(1)
    return train_generator(rng.integers(0, 256, (32, 784), dtype=np.uint8), np.repeat([0, 1], 16), steps=1,
                           batch=16, n_critic=1, sigma=2.0, dim=8)


def test_artifact_round_trip(trained):
    blob = artifact.to_bytes(trained, "pi-03", version=2)
    gen, info = artifact.load(blob, artifact.PrivacyPolicy(max_epsilon=100.0), device="pi-03")
    assert (info.device, info.version, info.histogram) == ("pi-03", 2, tuple(trained.histogram))
    assert (info.epsilon, info.delta, info.steps) == (pytest.approx(trained.epsilon), 1e-5, 1)
    for k, v in trained.generator.state_dict().items():
        assert torch.equal(v, gen.state_dict()[k])
    assert np.array_equal(generate(gen, [2, 2])[0], generate(trained.generator, [2, 2])[0])


def _reject(blob, policy=artifact.PrivacyPolicy(100.0), **kw):
    with pytest.raises(artifact.ArtifactRejected) as e:
        artifact.load(blob, policy, **kw)
    return e.value.reason


def test_artifact_refuses_tampering_and_privacy_overspend(trained):
    from semifl.protocol import wire
    blob = artifact.to_bytes(trained, "pi-03")
    flipped = bytearray(blob)
    flipped[-5] ^= 1                                                      # a weight's bit
    assert _reject(bytes(flipped)) == "hash"
    meta, ts = wire.decode_blob(blob)
    lied = dict(meta, epsilon=0.01)                                       # a smaller epsilon, old hash
    assert _reject(wire.encode_blob(lied, [(t[0], t[1], t[2], t[3], bytes(t[4])) for t in ts])) == "hash"
    bad_hash = dict(meta, sha256="0" * 64)
    assert _reject(wire.encode_blob(bad_hash, [(t[0], t[1], t[2], t[3], bytes(t[4])) for t in ts])) == "hash"
    assert _reject(blob, artifact.PrivacyPolicy(max_epsilon=trained.epsilon * 0.99)) == "privacy"
    assert _reject(blob, artifact.PrivacyPolicy(100.0, max_delta=1e-6)) == "privacy"
    assert _reject(blob, device="pi-04") == "device"
    assert _reject(blob[:-3]) == "malformed"
    trained_inf = artifact.TrainedGenerator(trained.generator, trained.histogram, math.inf, 1e-5, 0.0, 1, 0.5)
    assert _reject(artifact.to_bytes(trained_inf, "pi-03")) == "privacy"  # sigma = 0: not private at all


# ---- Algorithm 2
def _h(classes, n=1200, m=10):
    return [n if c in classes else 0 for c in range(m)]


def test_imputation_two_classes_per_device_pairs_with_all_four_others():
    """Seed V-F, 2 classes per device: each device needs the generators of the other four."""
    hists = {f"D{i + 1}": _h({2 * i, 2 * i + 1}) for i in range(5)}
    plan = impute(hists)
    for i, d in enumerate(hists):
        owner = {c: f"D{c // 2 + 1}" for c in range(10) if c // 2 != i}
        assert plan[d] == [Fill(c, owner[c], 1200) for c in sorted(owner)]


def test_imputation_seed_section_iii_and_celeba_pairing():
    # Fig. 4: D1 {c1, c2} and D2 {c3, c4}, 1000 each, are each other's pair; D3, D4 (500 of each) are eligible
    assert impute({"D1": [1000, 1000, 0, 0], "D2": [0, 0, 1000, 1000]}) == {
        "D1": [Fill(2, "D2", 1000), Fill(3, "D2", 1000)], "D2": [Fill(0, "D1", 1000), Fill(1, "D1", 1000)]}
    assert impute({"D3": [500] * 4, "D4": [500] * 4}) == {"D3": [], "D4": []}
    # CelebA distribution A's pattern (8 classes): D1 <-> D5, D2 <-> D3, D4 needs several generators
    hists = {"D1": [900, 800, 700, 600, 0, 0, 0, 0], "D2": [500, 500, 500, 500, 500, 500, 0, 0],
             "D3": [300, 300, 0, 0, 0, 0, 300, 300], "D4": [700, 0, 0, 0, 501, 0, 0, 0],
             "D5": [0, 0, 0, 0, 400, 400, 400, 400]}
    plan = impute(hists)
    assert plan["D1"] == [Fill(c, "D5", 750) for c in (4, 5, 6, 7)]
    assert plan["D5"] == [Fill(c, "D1", 400) for c in (0, 1, 2, 3)]
    assert plan["D2"] == [Fill(c, "D3", 500) for c in (6, 7)]
    assert plan["D3"] == [Fill(c, "D2", 300) for c in (2, 3, 4, 5)]
    # no single generator covers {1, 2, 3, 5, 6, 7}: D2 (4 of them), then D3 (ties with D5, earlier)
    assert plan["D4"] == [Fill(1, "D2", 601), Fill(2, "D2", 601), Fill(3, "D2", 601), Fill(5, "D2", 601),
                          Fill(6, "D3", 601), Fill(7, "D3", 601)]   # (700 + 501) / 2 rounded half up


def test_imputation_random_block_allocations_are_complete_and_deterministic():
    """Seed V-F's 4/6/8 classes per device: 5 devices, 1200-image blocks, no block twice."""
    for k in (4, 6, 8):
        rng = np.random.default_rng(k)
        blocks = {c: 5 for c in range(10)}
        hists = {}
        for d in range(5):
            left = [c for c in blocks if blocks[c] > 0]
            pick = sorted(left, key=lambda c: (-blocks[c], rng.random()))[:k]   # fullest first: always feasible
            for c in pick:
                blocks[c] -= 1
            hists[f"D{d + 1}"] = _h(set(pick))
        plan = impute(hists)
        assert plan == impute(dict(hists))
        for d, fills in plan.items():
            held = {c for c, n in enumerate(hists[d]) if n}
            assert {f.label for f in fills} == set(range(10)) - held
            assert all(f.quantity == 1200 and hists[f.generator][f.label] > 0 for f in fills)


def test_imputation_tops_up_underrepresented_classes():
    plan = impute({"A": [1000, 1000, 100], "B": [0, 0, 900]}, min_share=0.5)
    assert plan["A"] == [Fill(2, "B", 700 - 100)]                          # average 700, 100 held
    assert impute({"A": [1000, 1000, 100], "B": [0, 0, 900]})["A"] == []
    with pytest.raises(ValueError):
        impute({"A": [10, 0, 0], "B": [10, 0, 0], "C": [0, 5, 0]} | {"D": [0, 0, 0]})


def test_imputed_set_is_local_plus_generated():
    gens = {"D2": Generator(dim=8)}
    local_x = np.random.default_rng(0).integers(0, 256, (6, 784), dtype=np.uint8)
    x, y = imputed_set(local_x, np.array([0] * 6), [Fill(3, "D2", 4), Fill(5, "D2", 2)], gens)
    assert x.shape == (12, 28, 28, 1) and np.bincount(y, minlength=10).tolist() == [6, 0, 0, 4, 0, 2, 0, 0, 0, 0]
    assert np.allclose(x[:6].reshape(6, -1), local_x / 255.0)


# ---- pre-training
def _contrasty_generator():
    """An untrained generator whose images differ visibly by class (a scaled-up last layer)."""
    gen = Generator(dim=8)
    with torch.no_grad():
        gen.out.weight.mul_(20)
    return gen


def test_pretraining_on_generated_data_reduces_the_loss():
    torch.manual_seed(0)
    gens = [(_contrasty_generator(), [8, 8, 0, 0]), (_contrasty_generator(), [0, 0, 8, 8])]
    x, y, log = generated_dataset(gens, seed=0)
    assert log == [[8, 8, 0, 0], [0, 0, 8, 8]] and np.bincount(y).tolist() == [8, 8, 8, 8]
    net = SPLIT.network()
    theta0 = net.init(0)
    theta_pre, theta_pre_a = pretrain(x, y, net, SPLIT.cut, params=theta0, epochs=8, batch=8, lr=0.02)
    before, after = net.loss_and_grad(theta0, x, y)[0], net.loss_and_grad(theta_pre, x, y)[0]
    assert before > math.log(10) - 0.1 and after < math.log(4)   # better than the class prior alone
    f_a, _ = net.split(SPLIT.cut)
    assert len(theta_pre_a) == len(f_a.shapes()) and sum(p.size for p in theta_pre_a) == 37_568
    assert all(a is b for a, b in zip(theta_pre_a, theta_pre))
    assert f_a.forward(theta_pre_a, x[:2]).shape == (2, 14, 14, 64)        # the smashed data

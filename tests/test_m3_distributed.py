"""nlcore.optim.M3 under FSDP2 (`fully_shard`, DTensor parameters) with 2 CPU processes on
gloo: the parameters after a few steps equal the single-process run, and the optimizer state
keys are the same on every rank."""
import os
import tempfile

import pytest
import torch
from torch import nn

from conftest import rel_err

WORLD = 2
STEPS = 5
OPT_KW = dict(lr=0.02, alpha=0.5, slow_every=2, weight_decay=0.01, ns_dtype=torch.float32,
              adamw_lr=3e-3)


def _gloo_available() -> bool:
    try:
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
        return dist.is_available() and dist.is_gloo_available()
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _gloo_available(),
                                reason="torch.distributed with gloo / FSDP2 unavailable")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.l1 = nn.Linear(8, 16)            # [16, 8]
        self.l2 = nn.Linear(16, 8)            # [8, 16]
        self.l3 = nn.Linear(8, 8)             # [8, 8]
        self.l4 = nn.Linear(8, 5)             # [5, 8]: uneven shards (3 + 2)
        self.conv = nn.Parameter(torch.randn(6, 2, 2) * 0.3)  # ndim 3: matrix [6, 4]
        self.lm_head = nn.Linear(5, 11, bias=False)

    def forward(self, idx):
        h = self.emb(idx)
        h = torch.tanh(self.l1(h))
        h = torch.tanh(self.l2(h)) + h[..., :8]
        h = torch.tanh(self.l3(h)) + (h[..., :4] @ self.conv.reshape(6, 4).t())[..., :8].sum()
        return self.lm_head(self.l4(h))


def _data():
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, 11, (12, 6), generator=g)
    tgt = torch.randint(0, 11, (12, 6), generator=g)
    return idx, tgt


def _train(model, opt, steps=STEPS):
    idx, tgt = _data()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank, path, init_file):
    import faulthandler
    import torch.distributed as dist
    # a native crash (SIGABRT / SIGSEGV) leaves its Python stacks here for the parent to show
    faulthandler.enable(open(f"{init_file}.rank{rank}.crash", "w"), all_threads=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from nlcore.optim import M3, m3_param_groups

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = Net()
        mesh = init_device_mesh("cpu", (WORLD,))
        for name in ("l1", "l2", "l3", "l4", "lm_head"):
            fully_shard(getattr(model, name), mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        opt = M3(m3_param_groups(model), **OPT_KW)
        _train(model, opt)
        full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
        keys = [sorted(opt.state[p]) for p in model.parameters()]
        all_keys = [None] * WORLD
        dist.all_gather_object(all_keys, keys)
        sd = opt.state_dict()
        sd_keys = {i: sorted(s) for i, s in sd["state"].items()}
        all_sd = [None] * WORLD
        dist.all_gather_object(all_sd, sd_keys)
        if rank == 0:
            torch.save({"params": full, "keys": all_keys, "sd_keys": all_sd}, path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_ranks_equal_single_process():
    import torch.multiprocessing as mp
    from nlcore.optim import M3, m3_param_groups

    # A rank dying by a signal (SIGABRT seen twice in ~10 fresh-clone CI runs on a loaded 2-core
    # machine, never reproduced in 30 runs here; no message, so inside gloo / process teardown)
    # gets one more launch in a fresh directory, with its stacks kept as a warning; a second
    # crash fails the test. The equality checks below are the same either way.
    crashes = []
    for attempt in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.pt")
            init_file = os.path.join(tmp, "init")
            try:
                mp.spawn(_worker, args=(path, init_file), nprocs=WORLD, join=True)
            except mp.ProcessExitedException as e:
                stacks = ""
                for r in range(WORLD):
                    f = f"{init_file}.rank{r}.crash"
                    if os.path.exists(f) and os.path.getsize(f):
                        stacks += f"--- rank {r}:\n" + open(f).read()[-4000:]
                crashes.append(f"{e}\n{stacks or '(no Python stack was written)'}")
                continue
            got = torch.load(path)
            break
    else:
        pytest.fail("both launches crashed:\n" + "\n".join(crashes))
    if crashes:
        import warnings
        warnings.warn("test_m3_distributed: the first launch crashed and was rerun:\n"
                      + crashes[0])

    torch.manual_seed(0)
    model = Net()
    opt = M3(m3_param_groups(model), **OPT_KW)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt)
    for n, p in model.named_parameters():
        moved = p.detach() - init[n]
        assert rel_err(got["params"][n] - init[n], moved) < 1e-5, n
    assert got["keys"][0] == got["keys"][1]
    assert got["sd_keys"][0] == got["sd_keys"][1]
    assert ["momentum_buffer", "slow_momentum", "slow_sum", "slow_update", "step"] in \
        got["keys"][0]

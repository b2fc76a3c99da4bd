# Golden numbers for src/train/optim.rs tests: torch.optim.AdamW, two param groups (decay / no decay), f64.
import torch
torch.set_printoptions(precision=17)
W = torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -0.75]], dtype=torch.float64, requires_grad=True)
b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
opt = torch.optim.AdamW([{"params": [W], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                        lr=0.1, betas=(0.9, 0.999), eps=1e-8, foreach=False)
grads = [
    (torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64), torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64)),
    (torch.tensor([[-0.5, 1.0, 0.25], [2.0, -3.0, 1.0]], dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)),
    (torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64), torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)),
]
lrs = [0.1, 0.05, 0.02]
for (gw, gb), lr in zip(grads, lrs):
    for g in opt.param_groups: g["lr"] = lr
    opt.zero_grad()
    ((W * gw).sum() + (b * gb).sum()).backward()
    opt.step()
print("W", [repr(x) for x in W.detach().flatten().tolist()])
print("b", [repr(x) for x in b.detach().flatten().tolist()])
st = opt.state[W]
print("mW", [repr(x) for x in st["exp_avg"].flatten().tolist()])
print("vW", [repr(x) for x in st["exp_avg_sq"].flatten().tolist()])
# clip_grad_norm_
p1 = torch.zeros(2, dtype=torch.float64, requires_grad=True); p2 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
((p1 * torch.tensor([3.0, 4.0], dtype=torch.float64)).sum() + (p2 * 12.0).sum()).backward()
n = torch.nn.utils.clip_grad_norm_([p1, p2], 6.5)
print("clip", repr(n.item()), [repr(x) for x in p1.grad.tolist()], [repr(x) for x in p2.grad.tolist()])

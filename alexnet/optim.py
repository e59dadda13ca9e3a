"""SGD with momentum and weight decay in one pass over the fp32 state, writing a 16-bit copy of the weights.

The update is torch.optim.SGD's as the paper's recipe uses it (dampening 0, no Nesterov, minimising):

    g = grad + weight_decay * w;   m = momentum * m + g  (m = g on the first step);   w = w - lr * m

On CUDA it is one Triton launch over all the parameters (kernels/sgd.py) that reads w, grad and m once and writes
w, m and the copy once, with the bits of torch.optim.SGD's default (foreach) CUDA path in fp32; on the CPU it is
torch.optim.SGD's own per-tensor ops (the same bits as torch.optim.SGD there; the CPU's step is spent elsewhere).

For a step that a CUDA graph can capture and that reads nothing back to the host, each group's lr is a 0-dim
float64 tensor on the parameters' device: the lr schedulers update it in place (fill_), and float64 keeps their
arithmetic Python's, so a schedule gives the lr a float lr would (float32 would drift from it after two StepLR
decays). Under GradScaler (fp16) the pass unscales the gradients and skips the update where found_inf is set, on
the device; `.grad` stays scaled. The state_dict is torch.optim.SGD's (lr a float, "momentum_buffer" per
parameter), so checkpoints of either load in the other.

`copy_dtype=torch.bfloat16` (or float16) keeps for every parameter a 16-bit copy equal to `param.to(copy_dtype)`
after construction, every step and load_state_dict: `copy_of(param)` returns it, for the forward to read instead
of casting the weights.
"""

import torch

COPY_DTYPES = (torch.bfloat16, torch.float16)  # the copies kernels/sgd.py writes
# torch.optim.SGD's options: those of the update, which this one supports only at these values, and those of
# its implementation, which a state_dict of either may hold and which this one does not use
UPDATE_OPTIONS = {"dampening": 0, "nesterov": False, "maximize": False}
IMPLEMENTATION_OPTIONS = {"foreach": None, "differentiable": False, "fused": None}


def runs_kernel(device: torch.device) -> bool:
    """Whether the trainer's own Triton passes (this update, the step's totals: alexnet.step) run on `device`
    (else torch's ops do)."""
    return device.type == "cuda"


class SGD(torch.optim.Optimizer):
    _step_supports_amp_scaling = True  # GradScaler hands step() grad_scale and found_inf instead of unscaling

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, *,
                 copy_dtype: torch.dtype | None = None):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(f"SGD: {name} must be a number, got a tensor of shape {tuple(value.shape)}")
            if not float(value) >= 0:
                raise ValueError(f"SGD: {name} must be >= 0, got {float(value)}")
        if copy_dtype is not None and copy_dtype not in COPY_DTYPES:
            raise ValueError(f"SGD: copy_dtype must be None, torch.bfloat16 or torch.float16, got {copy_dtype}")
        self.copy_dtype, self.device, self._copies, self._strides = copy_dtype, None, {}, {}
        super().__init__(params, dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                                      **UPDATE_OPTIONS, **IMPLEMENTATION_OPTIONS))

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then: every parameter a dense fp32 tensor on the optimizer's one device; the group's lr a
        float64 tensor there; the parameters' 16-bit copies."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            name = f"parameter {i} of group {len(self.param_groups) - 1} (shape {tuple(p.shape)})"
            if p.dtype != torch.float32:
                raise TypeError(f"SGD: {name} has dtype {p.dtype}; it updates fp32 master weights only")
            if self.device is None:
                self.device = p.device
            if p.device != self.device:
                raise ValueError(f"SGD: {name} is on {p.device}, the first parameter on {self.device}: "
                                 f"one optimizer per device")
            if torch.empty_like(p, device="meta").stride() != p.stride():
                raise ValueError(f"SGD: {name} has strides {p.stride()} with gaps or overlaps; the update walks "
                                 f"a parameter's memory as one block")
            self._strides[p] = p.stride()  # its momentum buffer and copy are made in this layout
            if self.copy_dtype is not None:
                self._copies[p] = torch.empty_like(p, dtype=self.copy_dtype)
        group["lr"] = self._lr_tensor(group["lr"])
        self.refresh_copies()

    def _lr_tensor(self, lr) -> torch.Tensor:
        return torch.tensor(float(lr), dtype=torch.float64, device=self.device)

    def copy_of(self, param: torch.Tensor) -> torch.Tensor:
        """The 16-bit copy of `param` that step() keeps equal to param.to(copy_dtype)."""
        if self.copy_dtype is None:
            raise ValueError("SGD.copy_of: this optimizer keeps no 16-bit copies (copy_dtype=None)")
        if param not in self._copies:
            raise KeyError(f"SGD.copy_of: the tensor of shape {tuple(param.shape)} is not one of this "
                           f"optimizer's parameters")
        return self._copies[param]

    @torch.no_grad()
    def refresh_copies(self) -> None:
        """Set every 16-bit copy to its parameter cast (after the parameters changed outside step())."""
        for p, copy in self._copies.items():
            copy.copy_(p)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        for group in self.param_groups:
            if not isinstance(group["lr"], torch.Tensor):  # assigned a float: back on the device, once
                group["lr"] = self._lr_tensor(group["lr"])
            params = [p for p in group["params"] if p.grad is not None]
            grads = [self._grad(p) for p in params]
            firsts = [group["momentum"] != 0 and "momentum_buffer" not in self.state[p] for p in params]
            for p, first in zip(params, firsts):
                if first:  # zeros: an fp16 first step skipped for overflow leaves 0, from which the next starts
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            if runs_kernel(self.device):
                for first in (True, False):  # a launch for the parameters on their first step, one for the rest
                    chosen = [i for i, f in enumerate(firsts) if f == first]
                    if chosen:
                        self._kernel_update([params[i] for i in chosen], [grads[i] for i in chosen], group, first,
                                            grad_scale, found_inf)
            else:
                for p, g, first in zip(params, grads, firsts):
                    self._torch_update(p, g, group, first, grad_scale, found_inf)
        return loss

    def _grad(self, p: torch.Tensor) -> torch.Tensor:
        """p's gradient in p's layout, p checked to be as it was when added (torch keeps a gradient's shape, dtype
        and device its parameter's): the update launches with no further checks."""
        if p.stride() != self._strides[p] or p.dtype != torch.float32 or p.device != self.device:
            raise ValueError(f"SGD: the parameter of shape {tuple(p.shape)} is now {p.dtype} on {p.device} with "
                             f"strides {p.stride()}, not torch.float32 on {self.device} with {self._strides[p]}: make "
                             f"the optimizer after changing the model's dtype, device or memory format")
        g = p.grad
        if g.layout != torch.strided:
            raise ValueError(f"SGD: the gradient of the parameter of shape {tuple(p.shape)} is {g.layout}; "
                             f"it updates from dense gradients only")
        if g.stride() != p.stride():  # autograd gives a gradient its parameter's layout; one set by hand may differ
            g = torch.empty_like(p).copy_(g)
        return g

    def _kernel_update(self, params, grads, group, first_step, grad_scale, found_inf) -> None:
        from kernels.sgd import sgd_step  # here: importing Triton first on a CPU would keep its interpreter off

        momentum = group["momentum"]
        sgd_step(params, grads, [self.state[p]["momentum_buffer"] for p in params] if momentum != 0 else None,
                 [self._copies[p] for p in params] if self.copy_dtype is not None else None, group["lr"],
                 group["weight_decay"], momentum, first_step, grad_scale, found_inf, check=False)

    def _torch_update(self, p, g, group, first_step, grad_scale, found_inf) -> None:
        """torch.optim.SGD's per-tensor ops (_single_tensor_sgd), in its order; on the CPU reading a scalar is free."""
        if found_inf is not None and found_inf.item() != 0:
            return
        if grad_scale is not None:
            g = g / grad_scale.to(g.device)
        if group["weight_decay"] != 0:
            g = g.add(p, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            buf = self.state[p]["momentum_buffer"]
            if first_step:
                buf.copy_(g)
            else:
                buf.mul_(group["momentum"]).add_(g)
            g = buf
        p.add_(g, alpha=-group["lr"].item())
        if p in self._copies:
            self._copies[p].copy_(p)

    def state_dict(self) -> dict:
        """torch.optim.SGD's format: lr (and a scheduler's initial_lr) as floats."""
        state = super().state_dict()
        for group in state["param_groups"]:
            for key in ("lr", "initial_lr"):
                if isinstance(group.get(key), torch.Tensor):
                    group[key] = group[key].item()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load this optimizer's or torch.optim.SGD's state_dict (lr a float or a tensor, foreach or fused)."""
        for i, group in enumerate(state_dict["param_groups"]):
            for key, value in UPDATE_OPTIONS.items():
                if group.get(key, value) != value:
                    raise ValueError(f"SGD.load_state_dict: param group {i} has {key}={group[key]!r}; "
                                     f"this optimizer supports only {key}={value!r}")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.update(IMPLEMENTATION_OPTIONS, lr=self._lr_tensor(group["lr"]))
            for p in group["params"]:
                buf = self.state[p].pop("momentum_buffer", None)  # an old torch's may be None: a first step then
                if buf is not None and buf.stride() != p.stride():  # saved in another layout: take the parameter's
                    buf = torch.empty_like(p).copy_(buf)
                if buf is not None:
                    self.state[p]["momentum_buffer"] = buf
        self.refresh_copies()

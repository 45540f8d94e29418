"""The DARHT student: a backbone plus a head that represents every teacher's logits (paper, sec. 3).

    x [N,C,H,W] -> backbone.forward_features -> h [N,d] -> dropout(h, p)
      -> teacher_map = Linear(d, J*K)   maps [N,J,K]: block j is the student's view of teacher j's logits
      -> classifier  = Linear(J*K, K)   logits [N,K]

Monte Carlo dropout (sec. 3.2, Algorithm 1): C dropout samples of the HEAD on the same h, in training
and at test time; the per-sample logits U and maps V are averaged before any softmax. The backbone has no
randomness of its own (a backbone with its own dropout would need its own sampling), so running it
once and sampling only the head gives exactly what C full forward passes with the same dropout
masks give, at 1/C of the backbone cost. The C samples are drawn
in one call ([C,N,d] masks) and the head runs batched over them.

`deterministic=True` (or `set_deterministic`) turns dropout off and uses one sample: for export and
for comparing with/without MC dropout. `randomized` (read by `darht.models.is_randomized`) is True
while the output is stochastic, so evaluation knows to use EOT.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from darht.errors import DarhtError
from darht.models.zoo import create_model, unwrap
from darht.registry import MODELS


class DarhtStudent(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, num_teachers: int,
                 dropout: float = 0.3, mc_samples: int = 8):
        super().__init__()
        if num_teachers < 1:
            raise DarhtError(f"darht-student: num_teachers must be >= 1, got {num_teachers}")
        if num_classes < 2:
            raise DarhtError(f"darht-student: num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.num_teachers = int(num_teachers)
        self.num_features = int(backbone.num_features)
        self.teacher_map = nn.Linear(self.num_features, self.num_teachers * self.num_classes)
        self.classifier = nn.Linear(self.num_teachers * self.num_classes, self.num_classes)
        self.deterministic = False
        self._dropout = 0.0
        self._mc_samples = 1
        bspec = getattr(backbone, "spec", None) or {}
        self.spec: dict[str, Any] = {
            "name": "darht-student",
            "num_classes": self.num_classes,
            "in_chans": bspec.get("in_chans", 3),
            "img_size": bspec.get("img_size", 32),
            "kwargs": {"backbone": bspec.get("name"), "backbone_kwargs": dict(bspec.get("kwargs", {})),
                       "num_teachers": self.num_teachers},
        }
        self.configure(dropout=dropout, mc_samples=mc_samples)

    # -- settings ---------------------------------------------------------------------------------
    def configure(self, dropout: float | None = None, mc_samples: int | None = None) -> "DarhtStudent":
        """Change the head's dropout rate / number of MC samples (no parameter changes; spec follows)."""
        if dropout is not None:
            if not 0.0 <= float(dropout) < 1.0:
                raise DarhtError(f"darht-student: dropout must be in [0, 1), got {dropout}")
            self._dropout = float(dropout)
        if mc_samples is not None:
            if int(mc_samples) != mc_samples or int(mc_samples) < 1:
                raise DarhtError(f"darht-student: mc_samples must be an integer >= 1, got {mc_samples}")
            self._mc_samples = int(mc_samples)
        self.spec["kwargs"].update(dropout=self._dropout, mc_samples=self._mc_samples)
        return self

    @property
    def dropout(self) -> float:
        return self._dropout

    @property
    def mc_samples(self) -> int:
        return self._mc_samples

    def set_deterministic(self, flag: bool = True) -> "DarhtStudent":
        self.deterministic = bool(flag)
        return self

    @property
    def randomized(self) -> bool:
        """True while outputs are stochastic (MC dropout on), so evaluation must use EOT."""
        return not self.deterministic and self._dropout > 0.0

    # -- forward ----------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features h [N, d] from [0,1] input (the contract's pooled penultimate features)."""
        return self.backbone.forward_features(x)

    def sample_masks(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        """C inverted-dropout masks [C, N, d] (kept units scaled by 1/(1-p)); None when dropout is off.

        Drawn from the global RNG in one call, so a test can reproduce them by reseeding.
        """
        if self.deterministic or self._dropout == 0.0:
            return None
        keep = 1.0 - self._dropout
        shape = (self._mc_samples, n, self.num_features)
        dtype = torch.promote_types(like.dtype, torch.float32)  # exact 1/keep even under bf16 autocast
        return torch.empty(shape, dtype=dtype, device=like.device).bernoulli_(keep).div_(keep)

    def head_samples(self, h: torch.Tensor, masks: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample head outputs on features h [N,d]: logits [C,N,K], maps [C,N,J,K].

        `masks` ([C,N,d]) overrides the freshly drawn ones (for tests); C = 1 with no dropout.
        """
        n = h.shape[0]
        if masks is None:
            masks = self.sample_masks(n, h)
        hs = h.unsqueeze(0) if masks is None else h.unsqueeze(0) * masks  # [C,N,d]
        maps = self.teacher_map(hs)                                        # [C,N,J*K]
        logits = self.classifier(maps)                                     # [C,N,K]
        return logits, maps.view(*maps.shape[:2], self.num_teachers, self.num_classes)

    def forward_head(self, h: torch.Tensor, return_maps: bool = False):
        """MC-averaged (before softmax, Algorithm 1 line 8) logits [N,K] (and maps [N,J,K])."""
        logits, maps = self.head_samples(h)
        if return_maps:
            return logits.mean(0), maps.mean(0)
        return logits.mean(0)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Logits [N,K]; with return_maps=True also the teacher maps [N,J,K] (one backbone pass).

        `return_maps` goes through forward() so a DDP wrapper sees the call that builds the graph.
        """
        return self.forward_head(self.forward_features(x), return_maps=return_maps)

    def forward_draws(self, x: torch.Tensor, draws: int, masks: torch.Tensor | None = None) -> torch.Tensor:
        """`draws` independent predictions [R,N,K], each what one forward() would return, from ONE
        backbone pass: the randomness lives only in the head, so R forward passes differ only in
        their R*C head masks. EOT and the verdict rule for randomized models use this: R draws cost
        one backbone forward (and backward) plus R*C cheap head passes.

        `masks` ([R*C,N,d], draw r uses rows r*C..(r+1)*C-1) overrides the fresh ones (for tests).
        """
        h = self.forward_features(x)
        if self.deterministic or self._dropout == 0.0:
            return self.forward_head(h).unsqueeze(0).expand(draws, -1, -1)
        c, n = self._mc_samples, h.shape[0]
        if masks is None:
            keep = 1.0 - self._dropout
            dtype = torch.promote_types(h.dtype, torch.float32)
            masks = torch.empty((draws * c, n, self.num_features), dtype=dtype,
                                device=h.device).bernoulli_(keep).div_(keep)
        logits = self.classifier(self.teacher_map(h.unsqueeze(0) * masks))  # [R*C,N,K]
        return logits.view(draws, c, n, self.num_classes).mean(1)          # [R,N,K]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N,K], maps [N,J,K]), both averaged over the MC samples."""
        return self.forward(x, return_maps=True)


def unwrap_student(model: nn.Module) -> DarhtStudent | None:
    """The DarhtStudent inside `model` (plain, DDP- or compile-wrapped), or None."""
    model = unwrap(model)
    return model if isinstance(model, DarhtStudent) else None


@MODELS.register("darht-student")
def darht_student(num_classes: int, in_chans: int = 3, img_size: int = 32, *, backbone: str = "small-cnn",
                  backbone_kwargs: dict | None = None, num_teachers: int = 1, dropout: float = 0.3,
                  mc_samples: int = 8) -> DarhtStudent:
    """Build the backbone by name (any registered or timm: model) and wrap it in the DARHT head."""
    if backbone == "darht-student":
        raise DarhtError("darht-student: the backbone cannot itself be a darht-student")
    bkw = copy.deepcopy(backbone_kwargs or {})
    net = create_model(backbone, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **bkw)
    # The backbone's own classifier is never used: freeze it so optimisers (and weight decay) and
    # gradient all-reduce skip it. Its weights stay in the state dict, so the spec rebuilds as is.
    try:
        head = net.classifier_head
    except (AttributeError, NotImplementedError, DarhtError):
        head = None
    if isinstance(head, nn.Module):
        head.requires_grad_(False)
    student = DarhtStudent(net, num_classes, num_teachers, dropout=dropout, mc_samples=mc_samples)
    student.spec.update(in_chans=in_chans, img_size=img_size)
    student.spec["kwargs"].update(backbone=backbone, backbone_kwargs=bkw)
    return student


# ---- the MC mode of an exported student (darht export / evaluate --mode mc) ---------------------
def switch_off_mc(model: Any) -> dict | None:
    """Switch a darht-student's MC dropout off in place (dropout 0, one sample: the deterministic
    face, as a spec that `create_model` rebuilds); returns its MC mode {dropout, mc_samples}, or
    None when the model has none."""
    student = unwrap_student(model)
    if student is None or student.dropout == 0.0:
        return None
    mc = {"dropout": student.dropout, "mc_samples": student.mc_samples}
    student.configure(dropout=0.0, mc_samples=1)
    student.set_deterministic(False)
    return mc


def restore_mc_mode(model: Any, mc_mode: Any) -> bool:
    """Give an exported darht-student (dropout 0) back the MC mode its sidecar records; True if done."""
    student = unwrap_student(model)
    if student is None or student.dropout != 0.0 or not isinstance(mc_mode, dict):
        return False
    try:
        student.configure(dropout=float(mc_mode["dropout"]), mc_samples=int(mc_mode["mc_samples"]))
    except (KeyError, TypeError, ValueError):
        raise DarhtError(f"the checkpoint's meta.mc_mode is not {{dropout, mc_samples}}: {mc_mode!r}") from None
    student.set_deterministic(False)
    return True


# ---- the commands -------------------------------------------------------------------------------

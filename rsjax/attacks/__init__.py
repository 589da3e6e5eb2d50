"""Decision-based black-box attacks (HopSkipJump, SurFree, RayS), batched over images and
jit-compiled, against any :mod:`rsjax.oracle` oracle. See :mod:`rsjax.attacks.common` for the
shared API (``attack.run(oracle, x, y, key, max_queries) -> AttackResult``).

Noise-aware attacks (issue 16), built on :mod:`rsjax.attacks.noisy` (probabilistic bisection,
capped SPRT): 'psj' (PopSkipJump, :mod:`rsjax.attacks.psj`), 'rays_na' and 'surfree_na'
(:mod:`rsjax.attacks.noise_aware`: RayS and SurFree with noise-aware searches and decisions)."""
from __future__ import annotations

from rsjax.attacks.common import AttackResult, DecisionAttack

__all__ = ["AttackResult", "DecisionAttack", "HSJA", "RayS", "SurFree", "get_attack", "ATTACKS"]

ATTACKS = ("hsja", "surfree", "rays", "psj", "rays_na", "surfree_na")


def get_attack(name: str, **overrides) -> DecisionAttack:
    """Attack ``name`` (one of :data:`ATTACKS`) configured with its published defaults,
    overridden by ``overrides``."""
    from rsjax.errors import InputError

    key = name.lower()
    if key == "hsja":
        from rsjax.attacks.hsja import HSJA as cls
    elif key == "rays":
        from rsjax.attacks.rays import RayS as cls
    elif key == "surfree":
        from rsjax.attacks.surfree import SurFree as cls
    elif key == "psj":
        from rsjax.attacks.psj import PSJ as cls
    elif key == "rays_na":
        from rsjax.attacks.noise_aware import RaySNA as cls
    elif key == "surfree_na":
        from rsjax.attacks.noise_aware import SurFreeNA as cls
    else:
        raise InputError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return cls(**overrides)


def __getattr__(name: str):
    if name == "HSJA":
        from rsjax.attacks.hsja import HSJA
        return HSJA
    if name == "RayS":
        from rsjax.attacks.rays import RayS
        return RayS
    if name == "SurFree":
        from rsjax.attacks.surfree import SurFree
        return SurFree
    raise AttributeError(name)

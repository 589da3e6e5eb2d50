"""Decision-based black-box attacks (HopSkipJump, SurFree, RayS), batched over images and
jit-compiled, against any :mod:`rsjax.oracle` oracle. See :mod:`rsjax.attacks.common` for the
shared API (``attack.run(oracle, x, y, key, max_queries) -> AttackResult``)."""
from __future__ import annotations

from rsjax.attacks.common import AttackResult, DecisionAttack

__all__ = ["AttackResult", "DecisionAttack", "HSJA", "RayS", "SurFree", "get_attack", "ATTACKS"]

ATTACKS = ("hsja", "surfree", "rays")


def get_attack(name: str, **overrides) -> DecisionAttack:
    """Attack ``name`` ('hsja' | 'surfree' | 'rays') configured with its published defaults,
    overridden by ``overrides``."""
    from rsjax.errors import InputError

    key = name.lower()
    if key == "hsja":
        from rsjax.attacks.hsja import HSJA as cls
    elif key == "rays":
        from rsjax.attacks.rays import RayS as cls
    elif key == "surfree":
        from rsjax.attacks.surfree import SurFree as cls
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

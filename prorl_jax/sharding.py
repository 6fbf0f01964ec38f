"""The one table from logical axis names to mesh axes, and the mesh itself.

Every parameter and the main activations carry logical axis names (see
`prorl_jax.model.qwen.param_axes`); only this module decides which mesh axes they map to.

Mesh axes: 'data' (pure data parallel), 'fsdp' (data parallel whose members also shard the
params: ZeRO-3 style) and 'tensor' (Megatron tensor parallel over heads, ffw and vocab).

Rules:
- TRAIN_RULES: params FSDP-sharded over 'fsdp' along the embed dim and tensor-parallel over
  'tensor' along heads / ffw / vocab; batch over ('data', 'fsdp').
- SAMPLE_RULES: no FSDP (every 'fsdp' member holds the full params so decode steps do not
  all-gather weights each token); batch over ('data', 'fsdp'), heads over 'tensor'.

There is no catch-all: a logical name missing from the table raises, so a new parameter
cannot silently end up replicated. Two dims of one array mapped to the same mesh axis raise.

Uneven dims: a dim whose size does not divide the product of its mesh axes keeps only the
longest prefix of those axes whose product divides it (replicated when none does). Example:
2 kv heads on tensor=8 are replicated; a batch of 6 over ('data'=2, 'fsdp'=4) goes over
'data' only. jax would otherwise refuse such shardings for device_put and jit outputs.

Activations: `forward` calls `constrain(x, axes)` at block boundaries; it is a no-op unless
the caller traces inside `with use_rules(mesh, rules):`. Without it XLA propagates the
param and input shardings on its own, which is correct but may pick worse layouts.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from prorl_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

_SHARED_RULES: dict[str, MeshAxes] = {
    # params
    "layers": None,  # the scanned layer axis stays whole on every device
    "vocab": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    # activations
    "batch": ("data", "fsdp"),
    "seq": None,
    "cache_seq": None,
    "act_embed": None,
    "act_q_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_head_dim": None,
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}

TRAIN_RULES: dict[str, MeshAxes] = {**_SHARED_RULES, "embed": "fsdp"}
SAMPLE_RULES: dict[str, MeshAxes] = {**_SHARED_RULES, "embed": None}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'tensor') and Auto axis types.

    Args:
      data, fsdp, tensor: mesh axis sizes; their product devices are used.
      devices: devices to use (default jax.devices()); the first data*fsdp*tensor are taken.
    Returns:
      jax.sharding.Mesh of shape (data, fsdp, tensor).
    Raises:
      ConfigError when a size is < 1, more devices are requested than exist, or (with
      several processes) the mesh does not span every global device.
    """
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"mesh.{name} must be a positive integer, got {size!r}")
    devices = list(jax.devices() if devices is None else devices)
    need = data * fsdp * tensor
    if need > len(devices):
        raise ConfigError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {need} devices, "
            f"but only {len(devices)} are available")
    if jax.process_count() > 1 and need != jax.device_count():
        # Every process must own part of the mesh, or it could not run its share.
        raise ConfigError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {need} devices, but the "
            f"{jax.process_count()} processes hold {jax.device_count()} devices in all: "
            f"a multi-process mesh must span every device")
    grid = np.array(devices[:need], dtype=object).reshape(data, fsdp, tensor)
    # jax.make_mesh defaults to Explicit axes; Auto keeps sharding propagation to XLA.
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical: Sequence[str | None], rules: Rules, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names.

    Args:
      logical: one logical name (or None = replicated) per array dim.
      rules: TRAIN_RULES, SAMPLE_RULES or a table of the same form.
      mesh: when given with `shape`, mesh axes that do not divide a dim are dropped
        (longest dividing prefix kept) so the result is always a valid sharding.
      shape: the array's shape.
    Returns:
      PartitionSpec with one entry per dim.
    Raises:
      KeyError for a logical name not in `rules`; ValueError when two dims use one mesh axis.
    """
    if shape is not None and len(shape) != len(logical):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    per_dim: list[tuple[str, ...]] = []
    owner: dict[str, str] = {}
    for name in logical:
        if name is None:
            per_dim.append(())
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule (known: {sorted(rules)})")
        axes = _as_tuple(rules[name])
        for ax in axes:
            if ax in owner:
                raise ValueError(
                    f"mesh axis {ax!r} is used twice in one array: by logical axes "
                    f"{owner[ax]!r} and {name!r} (axes {tuple(logical)})")
            owner[ax] = name
        per_dim.append(axes)
    if mesh is not None and shape is not None:
        kept = []
        for size, axes in zip(shape, per_dim, strict=True):
            while axes and size % math.prod(mesh.shape[a] for a in axes):
                axes = axes[:-1]
            kept.append(axes)
        per_dim = kept
    return PartitionSpec(*[(a[0] if len(a) == 1 else a) if a else None for a in per_dim])


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def shardings_for(axes_tree: Any, mesh: Mesh, rules: Rules, shapes: Any = None) -> Any:
    """NamedShardings for a tree of logical-axis tuples.

    Args:
      axes_tree: a tree whose leaves are tuples of logical names (e.g. `param_axes(cfg)`).
      mesh: the device mesh.
      rules: TRAIN_RULES / SAMPLE_RULES.
      shapes: optional tree of the same structure whose leaves have `.shape` (arrays or
        jax.ShapeDtypeStruct). With it, non-dividing mesh axes are dropped per dim; without
        it the caller guarantees divisibility.
    Returns:
      a tree of NamedSharding with the structure of `axes_tree`.
    """
    if shapes is None:
        return jax.tree.map(lambda ax: NamedSharding(mesh, logical_to_spec(ax, rules)),
                            axes_tree, is_leaf=_is_axes)
    return jax.tree.map(
        lambda ax, s: NamedSharding(mesh, logical_to_spec(ax, rules, mesh, s.shape)),
        axes_tree, shapes, is_leaf=_is_axes)


def shard_batch(x: Any, mesh: Mesh, rules: Rules, axes: Sequence[str | None]) -> jax.Array:
    """Put a host (or device) array onto the mesh by its logical axes.

    Args:
      x: array, e.g. tokens [B, T].
      axes: one logical name per dim, e.g. ("batch", "seq").
    Returns:
      a jax.Array with NamedSharding (uneven dims replicated as described above).
    Under several processes every process must pass the same full `x` (e.g. the prompts
    every process read); each then places only the blocks of its own devices. A batch of
    which each process holds only its rows goes through `distributed.process_local_batch`.
    """
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    sharding = NamedSharding(mesh, logical_to_spec(axes, rules, mesh, x.shape))
    if isinstance(x, np.ndarray) and not sharding.is_fully_addressable:
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.device_put(x, sharding)


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "prorl_jax_sharding_rules", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules):
    """Within this context, `constrain` (used inside the model) shards activations."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def rules_for(mesh: Mesh | None, rules: Rules):
    """`use_rules(mesh, rules)`, or nothing without a mesh: jitted entry points that take
    their mesh as an argument enter it while tracing, so no caller sets an ambient context."""
    return contextlib.nullcontext() if mesh is None else use_rules(mesh, rules)


def active_rules() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) set by the innermost `use_rules`, or None."""
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names under `use_rules`; identity otherwise."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(axes, rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

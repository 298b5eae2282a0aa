"""The reference's Adam states (``g_optim`` / ``d_optim`` of a ``.pt``) <-> our Keras optimizers.

The reference resumes and fine-tunes with ``g_optim.load_state_dict(ckpt["g_optim"])``: its Adam starts from
the checkpoint's moments and step counts, not from zero. With beta1 = 0 a fresh Adam moves every weight by
about lr * sign(g) in its first steps, so starting from the stored second moments changes every recipe's first
hundreds of steps; we therefore load them too (``--fresh_optimizer`` starts from zero instead).

A torch Adam state dict: ``{"state": {i: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [{"lr", "betas",
"eps", "weight_decay", "amsgrad", ..., "params": [0, 1, ...]}]}``, where ``i`` is the parameter's index in
``module.parameters()`` (``reference_keys.parameter_keys``) and the moments have the parameter's PyTorch layout.
Keras 3's Adam keeps one momentum and one velocity per variable and one ``iterations`` counter; its update
``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` with t = iterations + 1 is torch's with t = step + 1,
up to where eps sits (1e-8: below float32 resolution of these updates). Frozen parameters never get a
gradient in either code: their states stay as loaded and are written back unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

from tf_cartoon.io import reference_keys as rk
from tf_cartoon.io.errors import CheckpointMismatchError

log = logging.getLogger(__name__)


def _parameter_rows(model, table_fn):
    """(reference key, variable, layout) of the parameters, in the reference's parameters() order."""
    keys = rk.parameter_keys(table_fn(model))
    rows = {k: (var, layout) for k, var, layout in table_fn(model)}
    return [(k, *rows[k]) for k in keys]


def load(opt, model, table_fn, state_dict: dict, what: str, source: str = "") -> int:
    """Assign a torch Adam state dict to ``opt`` (built on ``model``'s variables). Returns the step count
    set as ``opt.iterations`` (the largest stored step: the trained parameters'; frozen ones keep older counts
    that no update reads). Raises CheckpointMismatchError when the states do not fit the network."""
    rows = _parameter_rows(model, table_fn)
    state = state_dict.get("state") or {}
    where = f" in {source}" if source else ""
    if not state:
        return 0
    bad = [i for i in state if not isinstance(i, int) or not 0 <= i < len(rows)]
    if bad:
        raise CheckpointMismatchError(f"{what}{where}: Adam state indices {bad[:5]} outside the network's "
                                      f"{len(rows)} parameters")
    values, steps = [], []
    for i, st in sorted(state.items()):
        key, var, layout = rows[i]
        to_ours = rk.layout_of(layout, var)[0]
        for field in ("exp_avg", "exp_avg_sq"):
            arr = np.asarray(st.get(field))
            if arr.shape != rk.reference_shape(var, layout):
                raise CheckpointMismatchError(f"{what}{where}: Adam state {i} ('{key}') {field} has shape "
                                              f"{arr.shape}, the parameter {rk.reference_shape(var, layout)}")
        values.append((var, to_ours(np.asarray(st["exp_avg"], np.float32)),
                       to_ours(np.asarray(st["exp_avg_sq"], np.float32))))
        steps.append(int(np.asarray(st.get("step", 0)).reshape(())))
    for var, m, v in values:
        index = opt._get_variable_index(var)
        opt._momentums[index].assign(m)
        opt._velocities[index].assign(v)
    step = max(steps)
    opt.iterations.assign(step)
    return step


def stored_steps(state_dict: dict) -> dict[int, int]:
    """{parameter index: step} of a torch Adam state dict (all that ``to_reference`` needs of it later)."""
    return {i: int(np.asarray(st.get("step", 0)).reshape(())) for i, st in (state_dict.get("state") or {}).items()}


def to_reference(opt, model, table_fn, trained_vars=None, loaded_steps: dict[int, int] | None = None) -> dict:
    """``opt``'s states as a torch Adam state dict (what ``load`` reads and torch's Adam.load_state_dict
    takes). ``step`` is ``opt.iterations`` for the ``trained_vars`` (None: all); a frozen parameter keeps the
    step it was loaded with (its moments are untouched since). Parameters that never had a state (all-zero
    moments, not loaded) get no entry, as in torch."""
    rows = _parameter_rows(model, table_fn)
    loaded_steps = loaded_steps or {}
    trained = {id(v) for v in (model.trainable_variables if trained_vars is None else trained_vars)}
    iterations = int(opt.iterations.numpy())
    state = {}
    for i, (key, var, layout) in enumerate(rows):
        index = opt._get_variable_index(var)
        m, v = opt._momentums[index].numpy(), opt._velocities[index].numpy()
        if i not in loaded_steps and not (m.any() or v.any()):
            continue
        to_ref = rk.layout_of(layout, var)[1]
        step = iterations if id(var) in trained else loaded_steps.get(i, 0)
        state[i] = {"step": np.asarray(float(step), np.float32),
                    "exp_avg": np.ascontiguousarray(to_ref(m), np.float32),
                    "exp_avg_sq": np.ascontiguousarray(to_ref(v), np.float32)}
    lr = float(np.asarray(opt.learning_rate))
    group = {"lr": lr, "betas": (float(opt.beta_1), float(opt.beta_2)), "eps": float(opt.epsilon),
             "weight_decay": 0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
             "differentiable": False, "fused": None, "params": list(range(len(rows)))}
    return {"state": state, "param_groups": [group]}

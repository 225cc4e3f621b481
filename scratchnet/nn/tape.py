"""The tape: a model's forward is written once; its backward replays what forward recorded.

Two kinds of Module:

- a **leaf** has its own ``backward`` (``Conv2d``, ``ReLU``, the losses, ``Sequential``, a
  user's layer with a hand-written backward); every ``scratchnet.nn.functional`` op runs as
  one, too;
- a **composite** has none (a model written as in torch): calling one outside any other forward
  opens a tape, and every leaf call during its ``forward`` appends one entry
  ``(leaf, ids of its input arrays, ids of its output arrays)``. Composites called inside it
  add their leaves to the same tape.

``model.backward(dout)`` walks the entries last to first. Each entry's leaf gets the gradient
of its output and returns the gradient of its input, which is *added* to what that array
already received: an array used twice, or two branches meeting at ``F.add`` (a skip
connection), sum their gradients as the chain rule says. Parameters' gradients add into
``p.grad`` inside each leaf's backward. Entries that no gradient reaches are skipped; with
``input_grad=False`` (``module.backward_to_params``) entries that feed only on the input and
hold no parameters are skipped too, and the first ones with parameters skip their dx.

Arrays are tracked by identity. NumPy arithmetic between ops (``x * 2``, ``x.reshape``,
``x[:, :10]``) is therefore **not recorded**: a recorded op that receives an array which is
neither the model's input nor another op's output raises an error instead of computing a
wrong gradient (before the first op such an array is taken as the input, so light input
preparation stays possible). Use ``scratchnet.flatten`` and the ``functional`` ops, or a leaf
Module with its own backward.

A leaf module called twice in one forward (shared weights) works: the tape keeps a shallow copy
of the module's attributes from each call and puts it back before that call's backward.

Fusion (see ``fusion.py``): while a tape is open, a ``Conv2d`` or ``Linear`` call returns a
:class:`Deferred` output; if the next op on it is a ReLU (or a max-pool then ReLU, or a
LeakyReLU after a Linear), the run executes as one fused op over the same Parameters, else
the layer runs alone. Any other use of a Deferred (another op, NumPy, an attribute such as
``.shape``) runs what it holds first, so the result is the same, fused or not.
"""
import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_active = None


def active():
    """The tape being recorded, or None."""
    return _active


class Entry:
    """One recorded op: ``op.backward`` turns its output gradient(s) into input gradient(s)."""

    __slots__ = ("op", "inputs", "outputs", "multi_out", "state", "has_params", "skips")

    def __init__(self, op, inputs, outputs, multi_out, state, has_params, skips):
        self.op = op
        self.inputs = inputs
        self.outputs = outputs
        self.multi_out = multi_out
        self.state = state
        self.has_params = has_params
        self.skips = skips


class Tape:
    """The entries of one forward of ``owner`` (a composite Module), and its backward."""

    def __init__(self, owner, args):
        self.owner = owner
        self.entries = []
        self.roots = []
        # id -> array: every array the tape knows, kept alive so that no id is reused while
        # recording (dropped when the forward ends)
        self.known = {}
        self.last_entry = {}
        self.steps_used = set()
        self.started = False
        self.recording = True
        self.outputs = ()
        self.multi_out = False
        for a in args:
            if isinstance(a, np.ndarray):
                self._add_root(a)

    def _add_root(self, a):
        self.known[id(a)] = a
        self.roots.append(id(a))

    def check_input(self, name, x):
        """Raise unless ``x`` is the input or a recorded output (before any op: adopt it)."""
        if id(x) in self.known:
            return
        if not self.started:
            self._add_root(x)
            return
        raise RuntimeError(
            f"{type(self.owner).__name__}.forward: {name} received an array that no recorded "
            f"op produced and that is not the model's input (shape "
            f"{getattr(x, 'shape', None)}). NumPy arithmetic, indexing or reshaping between "
            f"layers is not recorded, so backward could not reach through it; use "
            f"scratchnet.flatten / scratchnet.nn.functional ops, or a Module with its own "
            f"backward")

    def record(self, op, inputs, out, state=None, has_params=None, skips=None):
        """Append ``op`` (an object with ``backward``) applied to ``inputs``, giving ``out``."""
        if not self.recording:
            return
        multi = isinstance(out, tuple)
        outs = out if multi else (out,)
        for o in outs:
            self.known[id(o)] = o
        if has_params is None:
            has_params = _has_parameters(op)
        if skips is None:
            skips = getattr(op, "skips_input_grad", False)
        self.entries.append(Entry(op, tuple(map(id, inputs)), tuple(map(id, outs)), multi,
                                  state, has_params, skips))

    def run_leaf(self, module, args, kwargs):
        """Call leaf ``module`` with recording paused (its own backward covers what it calls)."""
        global _active
        x = args[0] if args else None
        if type(x) is Deferred:
            out = x.extend(module) if not args[1:] and not kwargs else None
            if out is not None:
                return out
            x = x.materialize()
            args = (x,) + tuple(args[1:])
        if x is not None and id(x) not in self.known:
            self.check_input(type(module).__name__, x)
        self.started = True
        f = fusion or _load_fusion()
        if f.is_enabled() and f.defers(module, x) and not args[1:] and not kwargs:
            return Deferred(self, (module,), (type(module),), x)
        _active = None
        try:
            return self.run_module(module, args, kwargs)
        finally:
            _active = self

    def run_module(self, module, args, kwargs):
        """``module.forward(*args)`` recorded as one entry (recording already paused)."""
        prev = self.last_entry.get(id(module))
        if prev is not None:
            # the module runs again: keep what its last call left for that call's backward
            # (a shallow copy: forward replaces its cache attributes, it does not mutate them)
            prev.state = module.__dict__.copy()
        out = module.forward(*args, **kwargs)
        x = args[0] if args else None
        self.record(module, (x,) if x is not None else (), out)
        if self.recording:
            self.last_entry[id(module)] = self.entries[-1]
        return out

    def fused_step(self, layers, types, step_class):
        """The fused step of class ``step_class`` for ``layers`` (the head's own, reused; a
        fresh one if it already ran in this forward), bound to these layers."""
        head = layers[0]
        steps = head.__dict__.setdefault("_fused_steps", {})
        step = steps.get(types)
        if step is None:
            step = steps[types] = step_class(list(layers))
        elif id(step) in self.steps_used:
            return step_class(list(layers))
        else:
            step.rebind(list(layers))
        self.steps_used.add(id(step))
        return step

    def finish(self, out):
        """Run deferred outputs, note the output ids, stop recording and drop the array refs."""
        if isinstance(out, Deferred):
            out = out.materialize()
        elif isinstance(out, (tuple, list)) and any(isinstance(o, Deferred) for o in out):
            out = type(out)(o.materialize() if isinstance(o, Deferred) else o for o in out)
        self.multi_out = isinstance(out, (tuple, list))
        outs = tuple(out) if self.multi_out else (out,)
        self.outputs = tuple(map(id, outs))
        self.output_shapes = tuple(np.shape(o) for o in outs)
        self.output_dtype = getattr(outs[0], "dtype", np.dtype(np.float32)) if outs else None
        root = self.known.get(self.roots[0]) if self.roots else None
        self.root_shape, self.root_dtype = np.shape(root), getattr(root, "dtype", None)
        self.recording = False
        self.known = {}
        return out

    def backward(self, dout, input_grad=True):
        """d(first input) from d(output) (a tuple for tuple outputs); None with ``input_grad``
        False. Adds every parameter gradient into its ``p.grad``."""
        name = type(self.owner).__name__
        if dout is None:
            if self.multi_out or self.output_shapes != ((),):
                shapes = self.output_shapes if self.multi_out else self.output_shapes[0]
                raise ValueError(f"{name}.backward: dout is required for an output of shape "
                                 f"{shapes} (only a 0-d output implies 1)")
            dout = np.ones((), dtype=self.output_dtype)
        if self.multi_out:
            if not isinstance(dout, (tuple, list)) or len(dout) != len(self.outputs):
                raise TypeError(f"{name}.backward: the forward returned {len(self.outputs)} "
                                f"arrays, so dout must be a tuple of {len(self.outputs)} "
                                f"gradients (None for an unused one), got "
                                f"{type(dout).__name__}")
            douts = dout
        else:
            douts = (dout,)
        grads = {}
        for oid, g in zip(self.outputs, douts):
            if g is not None:
                _add(grads, oid, g)
        # which arrays need a gradient: those downstream of the input (when asked for) or of
        # an op with parameters
        needed = set(self.roots) if input_grad else set()
        feeds = []
        for e in self.entries:
            from_needed = any(i in needed for i in e.inputs)
            if from_needed or e.has_params:
                needed.update(e.outputs)
            feeds.append(from_needed)
        for e, from_needed in zip(reversed(self.entries), reversed(feeds)):
            if e.multi_out:
                g = tuple(grads.pop(o, None) for o in e.outputs)
                if all(gi is None for gi in g):
                    continue
            else:
                g = grads.pop(e.outputs[0], None)
                if g is None:
                    continue
            if not (from_needed or e.has_params):
                continue
            if e.state is not None:
                e.op.__dict__.update(e.state)
            if not from_needed:
                if e.skips:
                    e.op.backward(g, input_grad=False)
                else:
                    e.op.backward(g)
                continue
            dins = e.op.backward(g)
            if len(e.inputs) == 1:
                dins = (dins,)
            for i, d in zip(e.inputs, dins):
                if d is not None:
                    _add(grads, i, d)
        if not input_grad:
            return None
        if not self.roots:
            return None
        dx = grads.get(self.roots[0])
        if dx is None:
            # the input was prepared by NumPy before the first op (x.reshape, x.astype): the
            # prepared array's gradient, in the input's shape when the sizes agree
            prepared = next((grads[r] for r in self.roots[1:] if r in grads), None)
            if prepared is None:
                return np.zeros(self.root_shape, dtype=self.root_dtype or np.float32)
            if prepared.size == int(np.prod(self.root_shape)):
                return prepared.reshape(self.root_shape)
            return prepared
        return dx


def _add(grads, key, g):
    # a new array, never an in-place add: the first gradient may be an array a cache holds
    grads[key] = g if key not in grads else grads[key] + g


def run_composite(module, args, kwargs):
    """Forward of an outermost composite ``module`` under a new tape, kept for its backward."""
    global _active
    module.__dict__.pop("_tape", None)  # free the last step's entries before this forward
    tape = Tape(module, args)
    _active = tape
    try:
        out = tape.finish(module.forward(*args, **kwargs))
    finally:
        _active = None
        tape.recording = False
        tape.known = {}
    module.__dict__["_tape"] = tape
    return out


class Deferred(NDArrayOperatorsMixin):
    """The output of a Conv2d/Linear (and the ReLU/pool after it) not computed yet.

    It waits for the next op: one that extends a fusable run (``fusion.PATTERNS``) joins it;
    anything else runs it first (``materialize``). NumPy sees it as the array it stands for.
    """

    __slots__ = ("tape", "layers", "types", "x", "value", "extended", "step_class")

    def __init__(self, tape, layers, types, x, step_class=None):
        self.tape = tape
        self.layers = layers
        self.types = types  # the layers' types, in order
        self.x = x
        self.value = None
        self.extended = False
        self.step_class = step_class  # the run's fused step class, None if it has none

    def extend(self, module):
        """The run extended by ``module`` (deferred, or computed when complete); None if the
        run cannot grow by it."""
        if self.value is not None or self.extended:
            return None
        types = self.types + (type(module),)
        prefix, complete, step_class = (fusion or _load_fusion()).match(types)
        if not prefix:
            return None
        self.extended = True
        nxt = Deferred(self.tape, self.layers + (module,), types, self.x, step_class)
        return nxt.materialize() if complete else nxt

    def materialize(self):
        """Compute the run (fused where a fused op exists for it) and record it; the array."""
        global _active
        if self.value is not None:
            return self.value
        tape, layers, x = self.tape, self.layers, self.x
        saved, _active = _active, None  # recording paused, as in run_leaf
        try:
            if self.step_class is not None:
                step = tape.fused_step(layers, self.types, self.step_class)
                out = step(x)
                tape.record(step, (x,), out, has_params=True, skips=True)
            else:
                out = x
                for layer in layers:
                    out = tape.run_module(layer, (out,), {})
        finally:
            _active = saved
        self.value = out
        return out

    def __array__(self, dtype=None, copy=None):
        value = self.materialize()
        return value if dtype is None else value.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(i.materialize() if isinstance(i, Deferred) else i for i in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name):
        return getattr(self.materialize(), name)

    def __getitem__(self, index):
        return self.materialize()[index]

    def __len__(self):
        return len(self.materialize())

    def __repr__(self):
        return repr(self.materialize())


def _load_fusion():
    # on first use: fusion imports the layers, which import module.py, which imports this file
    global fusion
    from . import fusion
    return fusion


fusion = None
from .module import _has_parameters  # noqa: E402  (module.py imports this file at its end)

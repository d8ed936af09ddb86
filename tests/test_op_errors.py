"""Every argument check raises a sentence naming the argument, expected and actual value, and
leaves y untouched (DESIGN §5). One test per message."""

import re

import pytest
import torch

import lora_kernels as lk
from helpers.lora_cases import make_case
from lora_kernels._build import check_torch_version


@pytest.fixture
def case():
    return make_case(T=6, H_in=8, H_out=5, N=3, R=4)


def add(case, meta=False, **over):
    """add_lora on the case with some arguments replaced; with meta, every tensor on the meta
    device, so the fake impl (what torch.compile traces) runs instead of C++."""
    args = dict(y=case.y, x=case.x, lora_a=case.lora_a, lora_b=case.lora_b, scaling=case.scaling,
                indices=case.indices, ranks=case.ranks, lora_bias=case.lora_bias)
    args.update(over)
    if meta:
        args = {k: on_meta(v) for k, v in args.items()}
    indices = args.pop("indices")
    return lk.add_lora(args.pop("y"), args.pop("x"), args.pop("lora_a"), args.pop("lora_b"), args.pop("scaling"),
                       indices, **args)


def on_meta(value):
    """A tensor's meta twin, strides kept (.to("meta") makes a non-dense view contiguous)."""
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def raises_everywhere(message, fn, *args, values=False, **kwargs):
    """fn(*args, **kwargs) raises `message` from the C++ checks and, with every tensor moved to the
    meta device, from the fake impl (what torch.compile traces), unless it is about index values
    (only the kernels' hosts see those)."""
    with pytest.raises(RuntimeError, match=message):
        fn(*args, **kwargs)
    if not values:
        with pytest.raises(RuntimeError, match=message):
            fn(*map(on_meta, args), **{k: on_meta(v) for k, v in kwargs.items()})


def expect_error(case, message, values=False, **over):
    y_before = case.y.clone()
    with pytest.raises(RuntimeError, match=message):
        add(case, **over)
    assert torch.equal(case.y, y_before), "y was written before the error"
    if not values:  # index values are seen by the kernels' hosts only
        with pytest.raises(RuntimeError, match=message):
            add(case, meta=True, **over)


BAD_ARGUMENTS = {
    "x-dtype": (lambda c: dict(x=c.x.int()), r"add_lora: x must be float16, bfloat16, float32 or float64, got Int"),
    "x-dim": (lambda c: dict(x=c.x[None]), r"add_lora: x must be 2-D \[T, H_in\], got 3-D"),
    "x-stride": (lambda c: dict(x=c.x.t().contiguous().t()),
                 r"x must have unit stride along its last dimension .* got strides \[1, 6\]"),
    "lora_a-dim": (lambda c: dict(lora_a=c.lora_a[0], lora_b=c.lora_b), r"lora_a and lora_b must be 3-D, got 2-D and 3-D"),
    "lora_a-dtype": (lambda c: dict(lora_a=c.lora_a.double()),
                     r"lora_a must have the same dtype as x \(Float\), got Double"),
    "lora_a-H_in": (lambda c: dict(lora_a=c.lora_a[:, :, :7].contiguous()),
                    r"lora_a must have shape \[N, R, H_in\] with H_in = 8 \(from x\), got shape \[3, 4, 7\]"),
    "lora_a-contiguous": (lambda c: dict(lora_a=c.lora_a.transpose(0, 1).contiguous().transpose(0, 1)),
                          r"lora_a must be contiguous, got strides"),
    "lora_b-pair": (lambda c: dict(lora_b=c.lora_b[:2].contiguous()),
                    r"lora_b must have shape \[N, H_out, R\] with N = 3 and R = 4 \(from lora_a\), got shape \[2, 5, 4\]"),
    "lora_b-H_out": (lambda c: dict(lora_b=torch.randn(3, 6, 4)),
                     r"lora_b must have shape \[N, H_out, R\] with H_out = 5 \(from y\), got shape \[3, 6, 4\]"),
    "lora_b-dtype": (lambda c: dict(lora_b=c.lora_b.half()), r"lora_b must have the same dtype as y \(Float\), got Half"),
    "y-T": (lambda c: dict(y=torch.randn(5, 5)), r"y must have shape \[T, H_out\] with T = 6 \(from x\), got shape \[5, 5\]"),
    "y-dtype": (lambda c: dict(y=c.y.double(), lora_b=c.lora_b.double(), lora_bias=c.lora_bias.double()),
                r"y must have the same dtype as x \(Float\), got Double"),
    "indices-dtype": (lambda c: dict(indices=c.indices.float()), r"indices must be int32 or int64, got Float"),
    "indices-shape": (lambda c: dict(indices=c.indices[:5]), r"indices must have shape \[T\] = \[6\], got shape \[5\]"),
    "indices-value": (lambda c: dict(indices=torch.tensor([0, 1, 2, 3, -1, 0], dtype=torch.int32)),
                      r"indices\[3\] = 3 is out of range; expected -1 <= indices\[t\] < N = 3"),
    "indices-negative": (lambda c: dict(indices=torch.tensor([0, -2, 0, 0, 0, 0])),
                         r"indices\[1\] = -2 is out of range"),
    "ranks-shape": (lambda c: dict(ranks=torch.tensor([1, 2], dtype=torch.int32)),
                    r"ranks must have shape \[N\] = \[3\], got shape \[2\]"),
    "ranks-value": (lambda c: dict(ranks=torch.tensor([1, 5, 2], dtype=torch.int32)),
                    r"ranks\[1\] = 5 is out of range; expected 0 <= ranks\[a\] <= R = 4"),
    "scaling-dtype": (lambda c: dict(scaling=c.scaling.half()), r"scaling must be float32 \(or float64\), got Half"),
    "scaling-shape": (lambda c: dict(scaling=torch.ones(4)), r"scaling must have shape \[N\] with N = 3 \(from lora_b\), got shape \[4\]"),
    "bias-shape": (lambda c: dict(lora_bias=torch.randn(3, 4)),
                   r"lora_bias must have shape \[N, H_out\] with H_out = 5 \(from y\), got shape \[3, 4\]"),
    "bias-dtype": (lambda c: dict(lora_bias=c.lora_bias.double()), r"lora_bias must have the same dtype as y"),
}


VALUE_ERRORS = {"indices-value", "indices-negative", "ranks-value", "first", "last", "decreasing", "adapter"}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_argument(case, name):
    make, message = BAD_ARGUMENTS[name]
    expect_error(case, message, values=name in VALUE_ERRORS, **make(case))


SEGMENT_ERRORS = {
    "both": (dict(indices=torch.zeros(6, dtype=torch.int32), seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([0])),
             r"pass either indices or \(seg_indptr, seg_adapter\), not both"),
    "indptr-only": (dict(indices=None), r"pass either indices, or both seg_indptr and seg_adapter; got seg_indptr without seg_adapter"),
    "adapter-only": (dict(indices=None), r"pass either indices, or both seg_indptr and seg_adapter; got seg_adapter without seg_indptr"),
    "neither": (dict(indices=None), r"pass either indices, or both seg_indptr and seg_adapter; got none of them\."),
    "first": (dict(seg_indptr=torch.tensor([1, 6]), seg_adapter=torch.tensor([0])), r"seg_indptr\[0\] = 1 must be 0"),
    "last": (dict(seg_indptr=torch.tensor([0, 5]), seg_adapter=torch.tensor([0])),
             r"seg_indptr\[S\] = seg_indptr\[1\] = 5 must equal the number of tokens T = 6"),
    "decreasing": (dict(seg_indptr=torch.tensor([0, 4, 2, 6]), seg_adapter=torch.tensor([0, 1, 2])),
                   r"seg_indptr must be non-decreasing, but seg_indptr\[2\] = 2 < seg_indptr\[1\] = 4"),
    "adapter": (dict(seg_indptr=torch.tensor([0, 3, 6]), seg_adapter=torch.tensor([0, 3])),
                r"seg_adapter\[1\] = 3 is out of range; expected -1 <= seg_adapter\[s\] < N = 3"),
    "indptr-shape": (dict(seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([0, 1])),
                     r"seg_indptr must have shape \[S\+1\] = \[3\], got shape \[2\]"),
    "adapter-dim": (dict(seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([[0]])),
                    r"seg_adapter must be 1-D \[S\], got 2-D"),
}


@pytest.mark.parametrize("name", SEGMENT_ERRORS)
def test_bad_segments(case, name):
    over, message = SEGMENT_ERRORS[name]
    over = dict(over)
    if "indices" not in over:
        over["indices"] = None
    if name == "indptr-only":
        over["seg_indptr"] = torch.tensor([0, 6])
    if name == "adapter-only":
        over["seg_adapter"] = torch.tensor([0])
    expect_error(case, message, values=name in VALUE_ERRORS, **over)


def test_expand_v_checks(case):
    v = lk.bgmv_shrink(case.x, case.lora_a, case.indices)
    args = (case.lora_b, case.indices, case.scaling)
    expand = lk.bgmv_expand
    raises_everywhere(r"bgmv_expand: v must be Float \(the accumulator dtype for y's Float\), got Double",
                      expand, case.y, v.double(), *args)
    raises_everywhere(r"bgmv_expand: v must have shape \[T, R\] with T = 6 \(from y\), got shape \[5, 4\]",
                      expand, case.y, v[:5], *args)
    raises_everywhere(r"bgmv_expand: v must have shape \[T, R\] with R = 4 \(from lora_b\), got shape \[6, 3\]",
                      expand, case.y, v[:, :3], *args)
    raises_everywhere(r"bgmv_expand: y must be 2-D \[T, H_out\], got 1-D", expand, case.y[0], v, *args)
    raises_everywhere(r"bgmv_expand: lora_b must be 3-D \[N, H_out, R\], got 2-D",
                      expand, case.y, v, case.lora_b[0], case.indices, case.scaling)
    raises_everywhere(r"lora_b must be contiguous",
                      expand, case.y, v, case.lora_b.transpose(1, 2).contiguous().transpose(1, 2), case.indices,
                      case.scaling)


def test_shrink_checks(case):
    raises_everywhere(r"sgmv_shrink: lora_a must be 3-D \[N, R, H_in\], got 2-D",
                      lk.sgmv_shrink, case.x, case.lora_a[0], case.seg_indptr, case.seg_adapter)
    raises_everywhere(r"bgmv_shrink: indices must be contiguous",
                      lk.bgmv_shrink, case.x, case.lora_a, torch.zeros(12, dtype=torch.int32)[::2])


def test_embedding_checks():
    y = torch.randn(4, 6)
    lora_a, lora_b = torch.randn(2, 3, 10), torch.randn(2, 6, 3)
    scaling, indices = torch.ones(2), torch.tensor([0, 1, -1, 0])
    ids = torch.zeros(4, dtype=torch.long)
    y_before = y.clone()
    embed = lk.add_lora_embedding
    raises_everywhere(r"add_lora_embedding: token_ids\[2\] = 10 is out of range; expected 0 <= token_ids\[t\] < vocab = 10",
                      embed, y, torch.tensor([0, 1, 10, 3]), lora_a, lora_b, scaling, indices, values=True)
    raises_everywhere(r"add_lora_embedding: token_ids must be int32 or int64, got Float",
                      embed, y, torch.zeros(4), lora_a, lora_b, scaling, indices)
    raises_everywhere(r"add_lora_embedding: lora_b must have shape \[N, dim, R\] with N = 2 and R = 3",
                      embed, y, ids, lora_a, torch.randn(2, 6, 4), scaling, indices)
    raises_everywhere(r"add_lora_embedding: lora_b must have shape \[N, H_out, R\] with H_out = 6 \(from y\)",
                      embed, y, ids, lora_a, torch.randn(2, 7, 3), scaling, indices)
    assert torch.equal(y, y_before)


def test_compile_reports_a_bad_call_at_trace_time(case):
    """The fake impls check what C++ checks, so torch.compile refuses a bad call while tracing,
    before any backend compiles anything (it used to trace fine and fail at the first run)."""
    compiled_graphs = []

    def backend(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm

    def layer(y, x, lora_b):
        return lk.add_lora(y, x, case.lora_a, lora_b, case.scaling, case.indices)

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    y = case.y.clone()
    with pytest.raises(Exception, match=r"add_lora: lora_b must have shape \[N, H_out, R\] with N = 3 and R = 4 "
                                        r"\(from lora_a\), got shape \[2, 5, 4\]\."):
        compiled(y, case.x, case.lora_b[:2].contiguous())
    assert compiled_graphs == [] and torch.equal(y, case.y)
    compiled(y, case.x, case.lora_b)  # a good call compiles and runs
    assert len(compiled_graphs) == 1


# --- rules over every tensor argument of every op -------------------------------------------

def op_calls(c):
    """Every op: its lead argument (y, or x for the shrinks) and a valid keyword call on the CPU.
    add_lora_slices splits the case's y (H_out = 5) into slices of widths 3 and 2."""
    v = lk.bgmv_shrink(c.x, c.lora_a, c.indices, c.ranks)
    T, H_out = c.y.shape
    seg = dict(seg_indptr=c.seg_indptr, seg_adapter=c.seg_adapter)
    expand = dict(v=v, lora_b=c.lora_b)
    weights = dict(x=c.x, lora_a=c.lora_a, lora_b=c.lora_b, scaling=c.scaling)
    tail = dict(ranks=c.ranks, lora_bias=c.lora_bias)
    N, H_in = c.lora_a.shape[0], c.x.shape[1]
    slices = dict(x=c.x, lora_a=[c.lora_a, torch.randn(N, 2, H_in)],
                  lora_b=[c.lora_b[:, :3].contiguous(), torch.randn(N, H_out - 3, 2)],
                  scaling=[c.scaling, torch.rand(N)])
    slices_tail = dict(ranks=[c.ranks, torch.tensor([2, 0, 1], dtype=torch.int32)],
                       lora_bias=[c.lora_bias[:, :3].contiguous(), torch.randn(N, H_out - 3)])
    return {
        "bgmv_shrink": ("x", dict(x=c.x, lora_a=c.lora_a, indices=c.indices, ranks=c.ranks)),
        "sgmv_shrink": ("x", dict(x=c.x, lora_a=c.lora_a, **seg, ranks=c.ranks)),
        "bgmv_expand": ("y", dict(y=c.y, **expand, indices=c.indices, scaling=c.scaling, **tail)),
        "sgmv_expand": ("y", dict(y=c.y, **expand, **seg, scaling=c.scaling, **tail)),
        "add_lora": ("y", dict(y=c.y, **weights, indices=c.indices, **tail)),
        "add_lora[segments]": ("y", dict(y=c.y, **weights, **seg, **tail)),
        "add_lora_embedding": ("y", dict(y=c.y, token_ids=torch.randint(0, 7, (T,)), lora_a=torch.randn(3, 4, 7),
                                         lora_b=torch.randn(3, H_out, 4), scaling=c.scaling, indices=c.indices,
                                         ranks=c.ranks)),
        "add_lora_slices": ("y", dict(y=c.y, **slices, indices=c.indices, **slices_tail)),
        "add_lora_slices[segments]": ("y", dict(y=c.y, **slices, **seg, **slices_tail)),
    }


def named_tensors(kwargs):
    """Every tensor argument, by name; an element of a per-slice list is named like lora_a[1]."""
    for name, value in kwargs.items():
        if isinstance(value, (list, tuple)):
            yield from ((f"{name}[{i}]", t) for i, t in enumerate(value))
        elif value is not None:
            yield name, value


def _split(name):
    base, _, index = name.partition("[")
    return base, int(index[:-1]) if index else None


def get_arg(kwargs, name):
    base, i = _split(name)
    return kwargs[base] if i is None else kwargs[base][i]


def set_arg(kwargs, name, value):
    base, i = _split(name)
    if i is None:
        kwargs[base] = value
    else:
        kwargs[base] = list(kwargs[base])
        kwargs[base][i] = value


def call(op, kwargs, cpu_kernel=False):
    """torch.ops.lora_kernels.<op>(**kwargs); with cpu_kernel, the C++ CPU kernel itself, whatever
    dispatch key the arguments would select (a meta tensor would select the fake impl)."""
    overload = getattr(torch.ops.lora_kernels, op.split("[")[0]).default
    if cpu_kernel:
        return overload.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), **kwargs)
    return overload(**kwargs)


def _tensor_args(select=lambda t: True):
    calls = op_calls(make_case(T=6, H_in=8, H_out=5, N=3, R=4))
    return [(op, name) for op, (_, kw) in calls.items() for name, t in named_tensors(kw) if select(t)]


def _outputs(kwargs):
    """The y an in-place op would write (none for the shrinks), and a copy of it."""
    return [(kwargs["y"], kwargs["y"].clone())] if "y" in kwargs else []


def _assert_same(before):
    for y, y_before in before:
        assert torch.equal(y.detach(), y_before), "y was written before the error"


@pytest.mark.parametrize("cpu_kernel", [False, True], ids=["public", "cpu-kernel"])
@pytest.mark.parametrize(("op", "name"), _tensor_args())
def test_argument_on_another_device_is_refused(case, op, name, cpu_kernel):
    """A meta tensor among CPU ones selects the Meta key, so the public call reaches the fake impl
    (which once returned without a word, y unchanged); the C++ kernels check the same rule for
    the mixes that reach them (a CPU tensor beside CUDA ones)."""
    lead, kwargs = op_calls(case)[op]
    before = _outputs(kwargs)
    set_arg(kwargs, name, get_arg(kwargs, name).to("meta"))
    if name == lead:  # every other argument is then the one on the wrong device; the first is named
        named, lead_device, got = next(n for n, _ in named_tensors(kwargs) if n != lead), "meta", "cpu"
    else:
        named, lead_device, got = name, "cpu", "meta"
    message = f"{op.split('[')[0]}: {named} must be on the same device as {lead} ({lead_device}), got {got}."
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call(op, kwargs, cpu_kernel)
    _assert_same(before)


@pytest.mark.parametrize(("op", "name"), _tensor_args(lambda t: t.is_floating_point()))
def test_argument_requiring_grad_is_refused(case, op, name):
    lead, kwargs = op_calls(case)[op]
    set_arg(kwargs, name, get_arg(kwargs, name).detach().clone().requires_grad_())
    before = _outputs(kwargs)
    message = (f"{op.split('[')[0]}: {name} requires grad, but the lora_kernels ops are inference-only (no "
               f"autograd); call them under torch.no_grad() or torch.inference_mode(), or pass {name}.detach().")
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call(op, kwargs)
    _assert_same(before)
    with torch.no_grad():  # what the message says works does work
        call(op, kwargs)
    with torch.inference_mode():
        for n, t in list(named_tensors(kwargs)):
            set_arg(kwargs, n, t.detach())
        call(op, kwargs)


def test_python_wrapper_refuses_grad_too(case):
    x = case.x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"add_lora: x requires grad, but the lora_kernels ops are inference-only"):
        lk.add_lora(case.y, x, case.lora_a, case.lora_b, case.scaling, case.indices)
    with pytest.raises(RuntimeError, match=r"bgmv_shrink: x requires grad"):
        lk.bgmv_shrink(x, case.lora_a, case.indices)


IN_PLACE = ["bgmv_expand", "sgmv_expand", "add_lora", "add_lora[segments]", "add_lora_embedding", "add_lora_slices",
            "add_lora_slices[segments]"]


@pytest.mark.parametrize("strides", [(0, 1), (2, 1)], ids=["stride-0", "rows-overlap"])
@pytest.mark.parametrize("op", IN_PLACE)
def test_output_rows_sharing_memory_are_refused(case, op, strides):
    _, kwargs = op_calls(case)[op]
    store = torch.randn(64)
    kwargs["y"] = store.as_strided((6, 5), strides)  # torch.zeros(1, 5).expand(6, 5) is stride-0
    before = store.clone()
    message = (f"{op.split('[')[0]}: y must have rows that do not share memory (row stride >= H_out = 5), got "
               f"shape [6, 5] with strides [{strides[0]}, 1]; rows sharing memory would each receive every "
               f"row's update.")
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call(op, kwargs)
    assert torch.equal(store, before)


@pytest.mark.parametrize(("op", "name"), [(op, n) for op, n in _tensor_args() if op in IN_PLACE and n != "y"])
def test_input_sharing_memory_with_y_is_refused(case, op, name):
    _, kwargs = op_calls(case)[op]
    store = torch.randn(4096)  # y is its first rows; the input is laid over the same bytes
    kwargs["y"] = store[:30].view(6, 5)
    t = get_arg(kwargs, name)
    set_arg(kwargs, name, store.view(t.dtype)[: t.numel()].view(t.shape))
    before = store.clone()
    message = f"{op.split('[')[0]}: {name} must not share memory with the output y, but it does; pass a copy ({name}.clone())."
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call(op, kwargs)
    assert torch.equal(store, before)


def test_inputs_beside_y_in_one_tensor_are_fine():
    """A fused qkv output: y is a row-strided column slice; v, or x, in another column slice of
    the same tensor does not overlap it, and the result is the reference's."""
    case = make_case(T=7, H_in=6, H_out=5, N=3, R=4)
    v = lk.bgmv_shrink(case.x, case.lora_a, case.indices, case.ranks)
    fused = torch.randn(7, 4 + 5 + 6)
    fused[:, :4] = v
    fused[:, 9:] = case.x
    y = fused[:, 4:9]
    expected = lk.reference.add_lora(y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices,
                                     ranks=case.ranks, lora_bias=case.lora_bias)
    for use in ("v", "x"):
        y.copy_(case.y)
        expected = lk.reference.add_lora(case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices,
                                         ranks=case.ranks, lora_bias=case.lora_bias)
        if use == "v":
            lk.bgmv_expand(y, fused[:, :4], case.lora_b, case.indices, case.scaling, case.ranks, case.lora_bias)
        else:
            lk.add_lora(y, fused[:, 9:], case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks,
                        lora_bias=case.lora_bias)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"bgmv_expand: v must not share memory with the output y"):
        lk.bgmv_expand(fused[:, 3:8], fused[:, :4], case.lora_b, case.indices, case.scaling)


def test_overlap_rule_is_exact():
    """Random views of one buffer as y and v: refused exactly when they share an element."""
    case = make_case(T=6, H_in=8, H_out=5, N=3, R=4)
    gen = torch.Generator().manual_seed(0)
    store = torch.randn(200)
    refused = accepted = 0
    for _ in range(300):
        bounds = ((5, 13), (0, 60), (0, 13), (0, 60))  # y's row stride and offset, then v's
        sy, oy, sv, ov = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in bounds)
        y, v = store.as_strided((6, 5), (sy, 1), oy), store.as_strided((6, 4), (sv, 1), ov)
        shared = ({oy + t * sy + h for t in range(6) for h in range(5)}
                  & {ov + t * sv + r for t in range(6) for r in range(4)})
        if shared:
            with pytest.raises(RuntimeError, match=r"bgmv_expand: v must not share memory with the output y"):
                lk.bgmv_expand(y, v, case.lora_b, case.indices, case.scaling, case.ranks)
            refused += 1
        else:
            lk.bgmv_expand(y, v, case.lora_b, case.indices, case.scaling, case.ranks)
            accepted += 1
    assert refused > 50 and accepted > 50


def test_import_refuses_extension_built_for_another_torch():
    with pytest.raises(ImportError, match=re.escape("compiled against torch 2.13.0, but torch 2.14.1 is installed")) as err:
        check_torch_version("2.13.0", "2.14.1")
    assert "pip install --no-build-isolation --force-reinstall" in str(err.value)
    check_torch_version("2.14.1+cu130", "2.14.1+cpu")  # local tags do not change the ABI

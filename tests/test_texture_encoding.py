"""Deep TEN's encoding layer (`layers.TextureEncoding`): a naive loop's known answer and float64 gradients."""

import torch

from vestis.models.layers import TextureEncoding, texture_descriptor


def _naive(x, c, s):
    """e_k = sum_i a_ik (x_i - c_k), a_ik = softmax_k(-s_k ||x_i - c_k||^2), one loop per image, descriptor, codeword."""
    b, n, d = x.shape
    k = c.shape[0]
    out = torch.zeros(b, k, d, dtype=x.dtype)
    for bi in range(b):
        for i in range(n):
            logits = torch.stack([-s[j] * ((x[bi, i] - c[j]) ** 2).sum() for j in range(k)])
            a = torch.softmax(logits, 0)
            for j in range(k):
                out[bi, j] += a[j] * (x[bi, i] - c[j])
    return out


def test_encoding_matches_the_naive_loop():
    torch.manual_seed(0)
    layer = TextureEncoding(dim=5, codewords=4).double()
    with torch.no_grad():
        layer.codewords.normal_()
        layer.raw_scale.uniform_(-1, 1)
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    got = layer(x)
    want = _naive(x, layer.codewords, layer.scale)
    assert got.shape == (3, 4, 5)
    assert torch.allclose(got, want, atol=1e-10)
    a = layer.assignment(x)
    assert torch.allclose(a.sum(-1), torch.ones(3, 7, dtype=torch.float64))


def test_a_descriptor_on_a_codeword_has_no_residual_there():
    """One descriptor equal to codeword 0, far from the others with sharp smoothing: all its weight is on c_0, whose
    residual is then 0; every other residual is the (tiny) weight times x - c_k."""
    layer = TextureEncoding(dim=2, codewords=2).double()
    with torch.no_grad():
        layer.codewords.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
        layer.raw_scale.fill_(5.0)
    e = layer(torch.zeros(1, 1, 2, dtype=torch.float64))
    assert torch.allclose(e, torch.zeros(1, 2, 2, dtype=torch.float64), atol=1e-12)


def test_encoding_gradcheck_float64():
    """Gradients in the descriptors, the codewords and the smoothing factors, with and without the normalisation."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    c = (torch.randn(4, 3, dtype=torch.float64) * 0.5).requires_grad_()
    raw = torch.randn(4, dtype=torch.float64).requires_grad_()
    encode = lambda x, c, raw: TextureEncoding.forward(_Bound(c, raw), x)  # noqa: E731
    assert torch.autograd.gradcheck(encode, (x, c, raw))
    assert torch.autograd.gradcheck(lambda x, c, raw: texture_descriptor(encode(x, c, raw)), (x, c, raw))


class _Bound:
    """The layer's forward with codewords and smoothing given as plain tensors, so gradcheck perturbs them too."""

    def __init__(self, c, raw):
        self.codewords, self.raw_scale = c, raw

    scale = TextureEncoding.scale
    assignment = TextureEncoding.assignment

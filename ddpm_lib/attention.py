"""Multi-head self-attention over the H*W positions of a feature map (the U-Net's attention block)."""
import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadSelfAttention2d(nn.Module):
    """GroupNorm -> 1x1 q/k/v -> softmax(q k^T / sqrt(d)) v per head -> 1x1 projection, plus the input.

    (B, C, H, W) -> (B, C, H, W). Every pixel is a token of C channels, split into `num_heads` heads of
    d = C / num_heads channels each (contiguous channel chunks, as in torch.nn.MultiheadAttention).
    The default path calls F.scaled_dot_product_attention (flash / memory-efficient kernels on CUDA);
    `forward(x, return_attention=True)` computes the weights explicitly and also returns them,
    (B, heads, HW, HW), for viewers.
    """

    def __init__(self, channels: int, num_heads: int = 1, norm_groups: int = 32, eps: float = 1e-5):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads must divide channels; got channels={channels}, num_heads={num_heads}")
        if norm_groups < 1 or channels % norm_groups:
            raise ValueError(f"norm_groups must divide channels; got channels={channels}, norm_groups={norm_groups}")
        self.channels, self.num_heads = channels, num_heads
        self.norm = nn.GroupNorm(norm_groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)  # q, k, v stacked along the output channels
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W); a view below also when x is channels_last
        q, k, v = qkv.reshape(B, 3, heads, d, H * W).transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        if return_attention:
            scores = (q @ k.transpose(-1, -2)) * d**-0.5  # (B, heads, HW, HW)
            weights = scores.float().softmax(dim=-1)
            out = weights.to(v.dtype) @ v  # (B, heads, HW, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        out = out.transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C): heads back to contiguous channel chunks
        out = out.transpose(1, 2).reshape(B, C, H, W)  # a channels_last view, no copy
        out = x + self.proj_out(out)
        return (out, weights) if return_attention else out

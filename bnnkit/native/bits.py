"""Bit packing of binary weights: the file's layout [O, KH*KW, Cw] int64 words.

Bit j of word w (little-endian, the word's 64-bit pattern stored as int64) is input channel
64*w + j of the group; 1 means -1 and 0 means +1; the unused high bits of the last word are 0.
"""
from __future__ import annotations

import numpy as np
import torch


def pack_signs(negative: torch.Tensor) -> torch.Tensor:
    """negative: bool [O, Cg, KH, KW] (True where the weight is -1) -> int64 [O, KH*KW, Cw]."""
    O, Cg, KH, KW = negative.shape
    Cw = (Cg + 63) // 64
    bits = np.zeros((O, KH * KW, Cw * 64), dtype=np.uint8)
    bits[:, :, :Cg] = negative.permute(0, 2, 3, 1).reshape(O, KH * KW, Cg).cpu().numpy()
    packed = np.packbits(bits, axis=-1, bitorder="little")  # [O, K, Cw*8] bytes, little-endian words
    return torch.from_numpy(packed.view("<u8").view(np.int64).copy())


def unpack_signs(words: torch.Tensor, channels: int, kernel: tuple[int, int]) -> torch.Tensor:
    """Inverse of pack_signs: int64 [O, K, Cw] -> float32 ±1 weights [O, channels, KH, KW]."""
    O, K, Cw = words.shape
    b = np.unpackbits(words.contiguous().numpy().view(np.uint8).reshape(O, K, Cw * 8), axis=-1, bitorder="little")
    neg = torch.from_numpy(b[:, :, :channels].astype(np.float32))
    return (1.0 - 2.0 * neg).reshape(O, kernel[0], kernel[1], channels).permute(0, 3, 1, 2).contiguous()


def unused_bits_clear(words: torch.Tensor, channels: int) -> bool:
    """True when every bit above `channels` in the last word is 0 (the kernels rely on it)."""
    used = channels - 64 * (words.shape[-1] - 1)
    if used == 64:
        return True
    last = words[..., -1].contiguous().numpy().view(np.uint64)
    return bool(np.all((last >> np.uint64(used)) == 0))

"""The DALI backend (optional extra): decoding and augmentation in a DALI pipeline, GPU or CPU-only.

All random parameters are drawn here in Python, from the same seeded generators as the other
backends, and fed to the pipeline with external_source: so DALI follows the same sample order and
shards, and is as resumable. CIFAR crops/flips equal the fast backend's batch for batch; ImageNet crop
boxes, flips and Lighting equal the torch backend's sample for sample (only the resampling filter
differs, DALI's linear resize vs PIL's). Unlike the authors' DALI loaders, Lighting is applied when
asked (spec Q21: theirs silently dropped it).
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

import numpy as np
import torch
from PIL import Image

from ._augment import crop_flip_params
from ._errors import DataError
from ._images import load_rgb
from ._lighting import lighting_offset
from ._loader import ShardedLoader
from ._normalize import normalize_uint8
from ._order import generator, mix, sample_seeds
from ._source import Source
from ._torch_loader import seeded_rngs
from ._transforms import IMAGENET_RATIO, IMAGENET_SCALE

try:
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, pipeline_def, types
except ImportError:  # the extra is not installed; DaliLoader says how to get it
    fn = None


class DaliLoader(ShardedLoader):
    """CIFAR (train: pad-4 crop + flip) and ImageNet (train: RandomResizedCrop(224, scale (0.08, 1.25)),
    optional Lighting, flip; val: resize 256 + centre 224) on DALI, delivering normalised float32 NCHW."""

    def __init__(self, source: Source, batch_size: int, *, train: bool, lighting: bool, mean: tuple[float, ...],
                 std: tuple[float, ...], workers: int = 2, **kw):
        if fn is None:
            raise DataError("backend='dali' needs NVIDIA DALI, which is not installed: pip install 'bnnkit[dali]' "
                            "(or use backend='torch')")
        super().__init__(source, batch_size, **kw)
        if source.name not in ("cifar10", "cifar100", "imagenet"):
            raise DataError(f"backend='dali' supports cifar10, cifar100 and imagenet, not {source.name!r}: use backend='torch'")
        self.train, self.lighting, self.mean, self.std = train, lighting, mean, std
        self.cifar = source.name != "imagenet"
        self.gpu = self.device.type == "cuda"
        device_id = (self.device.index or 0) if self.gpu else None  # None: DALI's CPU-only mode
        self.pipe = pipeline_def(self._graph, batch_size=batch_size, num_threads=max(1, workers),
                                 device_id=device_id, seed=mix(self.seed) % 2**31, prefetch_queue_depth=1)()
        self.pipe.build()

    # ---- the pipeline graph -------------------------------------------------------------------------
    def _graph(self):
        if self.source.paths is None:  # CIFAR pickles: already-decoded HWC arrays
            img = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
            img = img.gpu() if self.gpu else img
        else:
            enc = fn.external_source(name="images", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(enc, device="mixed" if self.gpu else "cpu", output_type=types.RGB,
                                    adjust_orientation=False)  # PIL (the torch path) ignores EXIF too
        if not self.train:
            if self.cifar:
                return fn.crop_mirror_normalize(img, dtype=types.UINT8, output_layout="CHW", mean=[0.0], std=[1.0])
            img = fn.resize(img, resize_shorter=256, interp_type=types.INTERP_TRIANGULAR)
            return fn.crop_mirror_normalize(img, crop=(224, 224), crop_pos_x=0.5, crop_pos_y=0.5, dtype=types.UINT8,
                                            output_layout="CHW", mean=[0.0], std=[1.0])
        anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
        shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
        img = fn.slice(img, anchor, shape, axis_names="HW", normalized_anchor=False, normalized_shape=False,
                       out_of_bounds_policy="pad", fill_values=0)  # CIFAR's anchors start at -4: zero padding
        if not self.cifar:
            img = fn.resize(img, resize_x=224, resize_y=224, interp_type=types.INTERP_LINEAR, antialias=True)
            if self.lighting:  # add, clip to [0, 255], truncate to uint8: BiPer's Lighting
                inc = fn.external_source(name="lighting", dtype=types.FLOAT, ndim=1)
                inc = inc.gpu() if self.gpu else inc
                img = fn.cast(dmath.floor(dmath.clamp(img + inc, 0.0, 255.0)), dtype=types.UINT8)
        return fn.crop_mirror_normalize(img, mirror=mirror, dtype=types.UINT8, output_layout="CHW", mean=[0.0], std=[1.0])

    # ---- per-batch inputs ---------------------------------------------------------------------------
    def _read(self, indices: list[int]) -> list[np.ndarray]:
        if self.source.paths is None:
            return [self.source.arrays[i] for i in indices]
        try:
            return [np.fromfile(self.source.paths[i], dtype=np.uint8) for i in indices]
        except FileNotFoundError as e:
            raise DataError(f"image file {e.filename} has disappeared: restore it and rerun") from None

    def _imagenet_params(self, indices: list[int], seeds: list[int]) -> dict[str, list[np.ndarray]]:
        """Crop box, Lighting offset and flip per sample, drawn exactly as the torch backend's Compose
        draws them from the same per-sample seed (RandomResizedCrop, Lighting, RandomHorizontalFlip)."""
        from torchvision.transforms import RandomResizedCrop

        out = {"anchor": [], "shape": [], "mirror": [], "lighting": []}
        for i, seed in zip(indices, seeds):
            try:
                with Image.open(self.source.paths[i]) as im:
                    w, h = im.size  # header only
            except Exception:
                load_rgb(self.source.paths[i])  # raises DataError naming the file
                raise
            with seeded_rngs(seed):
                top, left, ch, cw = RandomResizedCrop.get_params(torch.empty(1).expand(3, h, w), list(IMAGENET_SCALE),
                                                                list(IMAGENET_RATIO))
                inc = lighting_offset(0.1) if self.lighting else np.zeros(3, np.float32)
                flip = bool(torch.rand(1) < 0.5)
            out["anchor"].append(np.array([top, left], np.float32))
            out["shape"].append(np.array([ch, cw], np.float32))
            out["mirror"].append(np.array(flip, np.int32))
            out["lighting"].append(inc.astype(np.float32))
        if not self.lighting:
            del out["lighting"]
        return out

    def _cifar_params(self, n: int, epoch: int, batch_index: int) -> dict[str, list[np.ndarray]]:
        top, left, flip = crop_flip_params(n, generator(self.seed, epoch, self.rank, batch_index))  # as FastLoader
        return {"anchor": [np.array([t - 4, l - 4], np.float32) for t, l in zip(top.tolist(), left.tolist())],
                "shape": [np.array([32, 32], np.float32)] * n, "mirror": [np.array(f, np.int32) for f in flip.tolist()]}

    def _run(self, indices: list[int], inputs: dict[str, list[np.ndarray]]) -> torch.Tensor:
        for name, data in inputs.items():
            self.pipe.feed_input(name, data)
        try:
            (out,) = self.pipe.run()
        except RuntimeError as e:
            if self.source.paths is not None:
                for i in indices:
                    load_rgb(self.source.paths[i])  # names the file PIL cannot decode either
            raise DataError(f"DALI failed on a batch of {self.source.origin} ({str(e).splitlines()[0]}): "
                            f"use backend='torch' to find the bad file") from None
        t = out.as_tensor()
        if self.gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            x = torch.empty(t.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(t, x, cuda_stream=torch.cuda.current_stream(self.device))
            return x
        return torch.from_numpy(np.array(t)).to(self.device)

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, positions, sizes = self._plan(epoch)
        seeds = sample_seeds(mix(self.seed, epoch, 0xA06), positions)  # the torch backend's per-sample seeds
        ends = list(accumulate(sizes))
        labels = torch.from_numpy(self.source.labels)
        for b in range(start, len(sizes)):
            lo, hi = ends[b] - sizes[b], ends[b]
            idx = indices[lo:hi].tolist()
            inputs = {"images": self._read(idx)}
            if self.train:
                inputs |= (self._cifar_params(len(idx), epoch, b) if self.cifar
                           else self._imagenet_params(idx, seeds[lo:hi]))
            x = self._run(idx, inputs)
            yield normalize_uint8(x, self.mean, self.std), labels[idx].to(self.device)

"""DISCO purifier: a local implicit image function trained to map adversarial images to clean ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from iqadef import Defence, Param, WeightsError, WeightSpec, hookimpl, load_state_dict_strict, load_weights

from ._disco_arch import LIIF, OFFICIAL_CONFIG

DISCO_WEIGHTS = WeightSpec(
    filename="disco_pgd.pth",
    urls=(
        # The file the reference study uses (msu-video-group/adversarial-defenses-for-iqa,
        # metrics/defences/disco/dfsrc/setup.sh). The official checkpoints (chihhuiho/disco) ship as a
        # Google Drive zip: training/save/<dataset>/pgd/imnet_mlp/trial_1/epoch-best.pth has the same layout.
        "https://titan.gml-team.ru:5003/fsdownload/zBJ7GXlz0/disco_pgd.pth",
    ),
    description="DISCO (LIIF, EDSR-baseline encoder) trained on PGD pairs; dict with 'model': {'name', 'args', 'sd'}",
)


def _config_from_spec(spec: dict, label: str) -> dict[str, Any]:
    """LIIF keyword arguments from the model spec saved in a DISCO checkpoint (``ckpt['model']``)."""
    args = spec.get("args") or {}
    encoder = args.get("encoder_spec") or {}
    imnet = args.get("imnet_spec") or {}
    enc_args = encoder.get("args") or {}
    imnet_args = imnet.get("args") or {}
    problems = []
    if spec.get("name") != "liif":
        problems.append(f"model name {spec.get('name')!r} (expected 'liif')")
    if encoder.get("name") != "edsr-baseline":
        problems.append(f"encoder {encoder.get('name')!r} (expected 'edsr-baseline')")
    if not enc_args.get("no_upsampling", False) or enc_args.get("res_scale", 1) != 1:
        problems.append("encoder with an upsampling tail or res_scale != 1")
    if imnet.get("name") != "mlp" or imnet_args.get("out_dim", 3) != 3:
        problems.append(f"implicit decoder {imnet.get('name')!r} (expected an 'mlp' with out_dim 3)")
    if args.get("feat_unfold_kernel") not in (None, 3):
        problems.append(f"feat_unfold_kernel {args.get('feat_unfold_kernel')} (only 3 is supported)")
    if problems:
        raise WeightsError(f"{label}: unsupported DISCO model: {'; '.join(problems)}")
    return dict(
        n_resblocks=int(enc_args.get("n_resblocks", 16)),
        n_feats=int(enc_args.get("n_feats", 64)),
        hidden_list=tuple(int(h) for h in imnet_args.get("hidden_list", ())),
        local_ensemble=bool(args.get("local_ensemble", True)),
        feat_unfold=bool(args.get("feat_unfold", True)),
        cell_decode=bool(args.get("cell_decode", True)),
    )


class DiscoDefence(Defence):
    """DISCO: local implicit function (EDSR encoder + MLP) re-rendering each pixel from adversarially trained features.

    Reference: msu-video-group/adversarial-defenses-for-iqa, metrics/defences/disco/run.py and
    robustbench/model_zoo/defense/inr.py (chihhuiho/disco): input mapped to [-1, 1], one LIIF queried
    at every pixel centre with the matching cell size, output mapped back and clamped to [0, 1]. The
    reference queries a fixed 299x299 grid (the size of its NIPS 2017 images); here the grid is the
    input's own size, so the output keeps the input size. No padding is needed.
    """

    name = "disco"
    differentiable = True
    params = (
        Param(
            "weights_path",
            Path,
            None,
            help="explicit path to disco_pgd.pth (else $IQADEF_WEIGHTS_DIR, the cache, or a download)",
        ),
        Param(
            "query_chunk",
            int,
            90000,
            low=1,
            help="query points decoded at once over the whole batch (memory only; the reference uses 90000)",
        ),
    )
    weights_path: str | None
    query_chunk: int
    weights = (DISCO_WEIGHTS,)
    #: Configuration used for checkpoints that hold a bare state dict (no saved model spec).
    arch_config: ClassVar[dict[str, Any]] = OFFICIAL_CONFIG

    def setup(self, device: torch.device) -> None:
        checkpoint = load_weights(DISCO_WEIGHTS, self.weights_path)
        label = str(self.weights_path or DISCO_WEIGHTS.filename)
        spec = checkpoint.get("model") if isinstance(checkpoint, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("sd"), dict):
            config, state = _config_from_spec(spec, label), spec["sd"]
        elif isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            config, state = dict(self.arch_config), checkpoint
        else:
            raise WeightsError(
                f"{label}: expected the DISCO layout (a dict with 'model': {{'name', 'args', 'sd'}}) "
                f"or a bare LIIF state dict"
            )
        network = LIIF(**config)
        load_state_dict_strict(network, state, label)
        self.network = network

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.network]

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        rendered = self.network(images * 2.0 - 1.0, chunk=self.query_chunk)
        return (rendered * 0.5 + 0.5).clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(DiscoDefence)

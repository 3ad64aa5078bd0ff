"""Sample-quality metrics with the ADM protocol: FID, sFID, Inception Score, precision and recall; and FDD.

Follows guided-diffusion's evaluator (Dhariwal & Nichol 2021), the suite the DiT/SiT/ELIT numbers are reported
with; FDD (Frechet distance in DINOv2 ViT-L/14 features, the ELIT paper's second headline metric) follows EDM2's
`calculate_metrics.py` (Karras et al. 2024). Depends only on torch, numpy, scipy, torch-fidelity and timm (none of
the rest of the repository).

Protocol
--------
- Features: TF-2015 Inception-v3 through torch-fidelity's TF-exact port (TF1 bilinear resize to 299, the TF
  graph's pools): pool_3 (2048) for FID and precision/recall; the 1008-way logits WITHOUT the fc bias for IS;
  for sFID the first 7 channels of `mixed_6/conv` (= Mixed_6d's 1x1 branch, after its ReLU), flattened in NHWC
  order (17 * 17 * 7 = 2023). One forward pass gives all three. Convolutions run in exact fp32 (TF32 off).
- FID / sFID: Frechet distance of Gaussian fits (float64, scipy.linalg.sqrtm, eps * I offset when the square
  root is not finite). A reference .npz holding `mu`, `sigma` (`mu_s`, `sigma_s`) supplies the reference
  statistics, as in ADM (they are Inception statistics, so they are ignored for another feature network).
- IS: softmax of the logits, splits of 5000 consecutive images, mean of exp(mean KL(p(y|x) || p(y))).
- Precision / recall: k-NN manifolds with k = 3 over all features (Kynkaenniemi et al. 2019), distances in float64
  in blocks (50k x 50k fits in memory; use a GPU at that size).
- FDD (`dinov2.py`): DINOv2 ViT-L/14 CLS features (1024) of the images resized to 224 by bicubic antialiased
  interpolation and normalised with ImageNet's mean/std, as EDM2's DINOv2Detector; Frechet distance as above.
  Its reference statistics are computed from the reference batch's images (ADM's stored ones are Inception's;
  note EDM2 computes its own from the whole training set, so absolute values differ from EDM2's tables).
- Batches: ADM .npz, `arr_0` uint8 (N, H, W, 3), streamed in pieces. Grey (N, H, W, 1) is replicated to RGB for
  Inception; a feature network gets the channels as they are. `arr_1` of a sample batch, when present, is taken
  as its labels (classifier accuracy of a feature network).

Inception weights (never downloaded)
------------------------------------
The standard state dict `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid) — torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` is the same file (same SHA-256 prefix, same keys) and is accepted too.
Located from, in order: the `inception_weights` argument (CLI `--inception-weights`), `$ELIT_INCEPTION_WEIGHTS`,
torch.hub's checkpoint folder (`$TORCH_HOME/hub/checkpoints/`, where pytorch-fid and torch-fidelity download it).
It is loaded with `weights_only=True` and must load strictly into torch-fidelity's Inception; a SHA-256 that is not
the standard file's (6726825d...) gives a warning (numbers not comparable with published ones).

DINOv2 weights (never downloaded)
---------------------------------
facebookresearch/dinov2's `dinov2_vitl14_pretrain.pth` (torch.hub layout) or timm's `vit_large_patch14_dinov2.lvd142m`
`model.safetensors` (timm layout), located from: the `dinov2_weights` argument (CLI `--dinov2-weights`),
`$ELIT_DINOV2_WEIGHTS`, torch.hub's checkpoint folder, the Hugging Face cache. evaluate.py computes FDD whenever
the file is found and says in one line that it skipped FDD (and how to enable it) when not; `--fdd` makes a
missing file an error, `--no-fdd` skips it.

Feature networks for other (small) datasets
-------------------------------------------
`--feature-network PATH` / `load_network(feature_network=PATH)` loads a TorchScript module (torch.jit.save) with

    forward(x: Tensor) -> Tuple[Tensor, Tensor]
        x:        float32 (B, C, H, W), pixel values in [0, 255], C as stored in the batch (1 = grey, 3 = RGB),
                  at the batch's own resolution (resize / normalise inside the module)
        returns   features (B, F) for the Frechet distance and precision/recall,
                  logits (B, K) for IS and classifier accuracy (a module may return features alone: IS is None)

For example, a classifier trained on the dataset:

    class Net(torch.nn.Module):
        def forward(self, x):
            h = self.body(x / 127.5 - 1)              # (B, F)
            return h, self.head(h)                    # features, logits
    torch.jit.script(Net()).save("net.pt")

With such a network sFID is None, the reference statistics are computed from the reference images, and
`classifier_accuracy` is reported when the samples have labels.

Python API
----------
    from evaluation import evaluate, load_network, reference_statistics
    net = load_network(inception_weights="pt_inception-2015-12-05-6726825d.pth")   # or feature_network="net.pt"
    ref = reference_statistics("VIRTUAL_imagenet256_labeled.npz", net)              # reusable across evaluations
    metrics = evaluate(samples_uint8_nhwc, ref, net)   # {'fid', 'sfid', 'inception_score', 'precision', 'recall', ...}
    metrics = evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz", net,
                       fdd_network=load_dinov2("dinov2_vitl14_pretrain.pth"))    # + 'fdd'

Lower-level: `compute_features(_many)`, `reference_statistics_many`, `feature_statistics`, `frechet_distance`,
`inception_score`, `precision_recall`, `manifold_radii`, `classifier_accuracy`. Input problems raise
`EvalInputError` (a ValueError) with a one-line message.
"""

from .batches import ArrayImages, NpzImages, write_json
from .dinov2 import DINOV2_ENV, DINOV2_FILENAME, DINOv2Features, find_dinov2_weights, load_dinov2
from .errors import EvalInputError
from .evaluator import (check_inputs, compute_features, compute_features_many, evaluate, reference_cache_path,
                        reference_statistics, reference_statistics_many)
from .features import (INCEPTION_ENV, INCEPTION_FILENAMES, FeatureNetwork, InceptionV3Features, ScriptedFeatures,
                       find_inception_weights, load_network)
from .metrics import (classifier_accuracy, feature_statistics, frechet_distance, inception_score, manifold_radii,
                      precision_recall)

__all__ = [
    "evaluate", "check_inputs", "reference_statistics", "reference_statistics_many", "compute_features", "compute_features_many",
    "reference_cache_path", "load_network", "find_inception_weights", "load_dinov2", "find_dinov2_weights",
    "DINOv2Features", "DINOV2_ENV", "DINOV2_FILENAME", "FeatureNetwork", "InceptionV3Features", "ScriptedFeatures",
    "INCEPTION_ENV", "INCEPTION_FILENAMES", "frechet_distance", "feature_statistics", "inception_score", "precision_recall",
    "manifold_radii", "classifier_accuracy", "ArrayImages", "NpzImages", "write_json", "EvalInputError",
]

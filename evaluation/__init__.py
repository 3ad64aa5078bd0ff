"""Sample-quality metrics with the ADM protocol: FID, sFID, Inception Score, precision and recall.

Follows guided-diffusion's evaluator (Dhariwal & Nichol 2021), the suite the DiT/SiT/ELIT numbers are reported
with. Depends only on torch, numpy, scipy and torch-fidelity (none of the rest of the repository).

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

Lower-level: `compute_features`, `feature_statistics`, `frechet_distance`, `inception_score`, `precision_recall`,
`manifold_radii`, `classifier_accuracy`. Input problems raise `EvalInputError` (a ValueError) with a one-line
message.
"""

from .batches import ArrayImages, NpzImages, write_json
from .errors import EvalInputError
from .evaluator import compute_features, evaluate, reference_cache_path, reference_statistics
from .features import (INCEPTION_ENV, INCEPTION_FILENAMES, FeatureNetwork, InceptionV3Features, ScriptedFeatures,
                       find_inception_weights, load_network)
from .metrics import (classifier_accuracy, feature_statistics, frechet_distance, inception_score, manifold_radii,
                      precision_recall)

__all__ = [
    "evaluate", "reference_statistics", "compute_features", "reference_cache_path", "load_network",
    "find_inception_weights", "FeatureNetwork", "InceptionV3Features", "ScriptedFeatures", "INCEPTION_ENV",
    "INCEPTION_FILENAMES", "frechet_distance", "feature_statistics", "inception_score", "precision_recall",
    "manifold_radii", "classifier_accuracy", "ArrayImages", "NpzImages", "write_json", "EvalInputError",
]

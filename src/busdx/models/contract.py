"""The interface between training (which exports) and inference (which only needs ONNX Runtime).

Both ONNX models take grayscale images in [0, 1] and do their own normalisation inside the graph,
so the serving side never needs to know a backbone's mean and standard deviation.

Segmenter: ``image`` float32 [N, 1, S, S] (the letterboxed image, see busdx.data.preprocess)
    -> ``mask_logits`` float32 [N, 1, S, S]; sigmoid > 0.5 is lesion.
Classifier: ``image`` float32 [N, V, C, C] (lesion crops, see busdx.data.crop; one analysis
    sends its crops at the card's contexts as one batch and averages their logits). V = 1 for
    the card's ``input`` "crop" or "image"; V = 2 for "both": channel 0 the crop, channel 1 the
    whole letterboxed image)
    -> ``logit`` float32 [N, 1], the malignancy logit with Platt scaling's intercept already
       folded into the bias: sigmoid(logit / temperature) is the calibrated probability,
    -> ``cam`` float32 [N, 1, h, w], the class-activation map: each position's contribution to
       the logit (the head is global average pooling then linear, so the mean of ``cam`` plus
       the bias is the logit).
The temperature, the operating threshold and the crop settings live in models/model_card.json,
written by the calibration and evaluation code.
"""

SEGMENTER_FILE = "segmenter.onnx"
CLASSIFIER_FILE = "classifier.onnx"
MODEL_CARD_FILE = "model_card.json"
INPUT_NAME = "image"
SEGMENTER_OUTPUT = "mask_logits"
# optional outputs of a segmenter graph: the encoder's pooled features (one row per image),
# their Mahalanobis distance from the training images' (busdx.evaluation.appearance adds it),
# and the logit that the image shows a lesion at all (busdx.evaluation.presence adds it)
FEATURES_OUTPUT = "features"
APPEARANCE_OUTPUT = "appearance"
PRESENCE_OUTPUT = "presence"
CLASSIFIER_OUTPUTS = ("logit", "cam")


# backbone passes per sample relative to no mirror averaging (flip_crop: 3 of a two-view model's 4)
TTA_COST = {"none": 1.0, "flip": 2.0, "flip_crop": 1.5}


def input_views(kind: str) -> int:
    """Images per sample the classifier takes for the card's ``input``: 2 for "both" (crop, then
    whole image), else 1."""
    return 2 if kind == "both" else 1

"""Evaluation: the synthetic set's attribute classifier and caption accuracy; R-precision with the DAMSM encoders
(AttnGAN's protocol, t2ifast.evaluation.r_precision) and which caption attributes a DAMSM tells apart on real images
(t2ifast.evaluation.damsm_attributes); Inception Score and FID from a user-provided Inception
weights file (t2ifast.evaluation.inception_metrics, imported on use: it needs the `eval` extra).

    classifier, report = load_or_train_attribute_classifier(folder, "~/.cache/t2ifast/classifiers")
    result = caption_accuracy(generate, open_dataset(folder, "test"), load_attributes(folder), classifier)
    r = evaluate_r_precision(generate, text_encoder, image_encoder, open_dataset(folder, "test"), num_images=3000)
"""

from t2ifast.evaluation.attribute_classifier import (
    CLASSIFIER_VERSION,
    AttributeClassifier,
    ClassifierReport,
    chance_accuracy,
    load_attribute_classifier,
    load_or_train_attribute_classifier,
    save_attribute_classifier,
    train_attribute_classifier,
)
from t2ifast.evaluation.caption_accuracy import CaptionAccuracy, caption_accuracy, caption_accuracy_of_real_images
from t2ifast.evaluation.damsm_attributes import AttributeDiscrimination, attribute_discrimination, damsm_score
from t2ifast.evaluation.r_precision import RPrecision, draw_negatives, evaluate_r_precision, r_precision

__all__ = [
    "CLASSIFIER_VERSION",
    "AttributeClassifier",
    "AttributeDiscrimination",
    "CaptionAccuracy",
    "ClassifierReport",
    "RPrecision",
    "attribute_discrimination",
    "caption_accuracy",
    "caption_accuracy_of_real_images",
    "chance_accuracy",
    "damsm_score",
    "draw_negatives",
    "evaluate_r_precision",
    "frechet_inception_distance",
    "inception_score",
    "load_attribute_classifier",
    "load_or_train_attribute_classifier",
    "r_precision",
    "save_attribute_classifier",
    "train_attribute_classifier",
]


def __getattr__(name):  # the Inception metrics load torchmetrics only when asked for
    if name in ("inception_score", "frechet_inception_distance"):
        from t2ifast.evaluation import inception_metrics

        return getattr(inception_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

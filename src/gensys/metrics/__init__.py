"""gensys.metrics: offline metrics, each proven against a reference library; online metrics from events.

Families: classification, regression, ranking, perplexity, text (bleu, rouge, meteor, cider, completion),
image (FID/KID/IS/SWD/LPIPS/CLIPScore/FVD over a user-supplied feature network), online (events, report).
"""

from gensys.metrics.bleu import bleu, chrf, coco_bleu
from gensys.metrics.cider import cider, cider_d, coco_tokenize
from gensys.metrics.classification import (
    accuracy,
    confusion_matrix,
    f1,
    precision,
    precision_recall_f1,
    recall,
)
from gensys.metrics.completion import exact_match_at_n
from gensys.metrics.events import EVENT_NAMES, Event, EventLog
from gensys.metrics.image import (
    clip_score,
    extract_features,
    feature_stats,
    fid,
    frechet_distance,
    fvd,
    inception_score,
    kid,
    load_feature_extractor,
    lpips_distance,
    sliced_wasserstein,
)
from gensys.metrics.inputs import MetricInputError, Score
from gensys.metrics.meteor import meteor
from gensys.metrics.online import (
    Rate,
    acceptance_rate,
    characters_saved,
    churn_rate,
    click_through_rate,
    completion_rate,
    conversion_rate,
    engagement_rate,
    latency_percentiles,
    retention,
    revenue_per_user,
    summary,
    thumbs_up_ratio,
    translation_edit_rate,
)
from gensys.metrics.perplexity import PerplexityAccumulator, perplexity
from gensys.metrics.ranking import (
    average_precision_score,
    mean_average_precision,
    mrr,
    ndcg_at_k,
    ndcg_score,
    precision_at_k,
    recall_at_k,
)
from gensys.metrics.regression import mae, mse, rmse
from gensys.metrics.rouge import coco_rouge_l, rouge

__all__ = [
    "EVENT_NAMES",
    "Event",
    "EventLog",
    "MetricInputError",
    "PerplexityAccumulator",
    "Rate",
    "Score",
    "acceptance_rate",
    "accuracy",
    "average_precision_score",
    "bleu",
    "characters_saved",
    "chrf",
    "churn_rate",
    "cider",
    "cider_d",
    "click_through_rate",
    "clip_score",
    "coco_bleu",
    "coco_rouge_l",
    "coco_tokenize",
    "completion_rate",
    "confusion_matrix",
    "conversion_rate",
    "engagement_rate",
    "exact_match_at_n",
    "extract_features",
    "f1",
    "feature_stats",
    "fid",
    "frechet_distance",
    "fvd",
    "inception_score",
    "kid",
    "latency_percentiles",
    "load_feature_extractor",
    "lpips_distance",
    "mae",
    "mean_average_precision",
    "meteor",
    "mrr",
    "mse",
    "ndcg_at_k",
    "ndcg_score",
    "perplexity",
    "precision",
    "precision_at_k",
    "precision_recall_f1",
    "recall",
    "recall_at_k",
    "retention",
    "revenue_per_user",
    "rmse",
    "rouge",
    "sliced_wasserstein",
    "summary",
    "thumbs_up_ratio",
    "translation_edit_rate",
]

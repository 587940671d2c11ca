from .build import EVALUATOR_REGISTRY, build_evaluator  # noqa: F401
from .evaluator import Classification, EvaluatorBase  # noqa: F401
from .multilabel import MultiLabelClassification  # noqa: F401,E402

from .accuracy import compute_accuracy  # noqa: F401
from .distance import compute_distance_matrix, cosine_distance, euclidean_squared_distance  # noqa: F401

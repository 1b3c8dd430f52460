"""The models-from-code file of the registered recommender (``mlflow.pyfunc.log_model(python_model=<this file>)``).

MLflow copies this file into the logged model and executes it at load time (``mlflow.pyfunc.load_model``,
``mlflow models serve``); :func:`mlflow.models.set_model` hands it the (empty) :class:`SALRecommender`, whose
``load_context`` then builds the torch model from the logged artifacts. So the artifact holds only weights
(``weights_only=True``), tables and code — never a pickled Python object.
"""

from mlflow.models import set_model

from mufasa.serving.recommender import SALRecommender

set_model(SALRecommender())

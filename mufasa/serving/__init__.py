"""Serving the registered SAL recommender: the pyfunc (:mod:`.recommender`) and its models-from-code file
(:mod:`.sal_pyfunc`), which MLflow runs to build the model when it loads it (nothing is pickled)."""

"""The built-in MLflow tracker: the store (:mod:`.store`: which one, and the protocol both kinds
implement), the two ways of writing it (:mod:`.client` through ``MlflowClient``, :mod:`.sqlite`
directly), and the tracker's hooks (:mod:`.hooks`)."""

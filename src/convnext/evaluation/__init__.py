"""What training and inference both need to judge a model: the evaluation loop counting every sample once
across ranks (``loop``), the metrics (``metrics``) and saving figures (``figures``). Below ``engine/`` and
``inference/``, so that running trained weights never imports the training code."""

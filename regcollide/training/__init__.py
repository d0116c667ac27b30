"""Training: ``train(config)`` (:mod:`.loop`) over the config schema (:mod:`.config`, :mod:`.validate`),
the step math (:mod:`.step`), pickle-free resumable states (:mod:`.checkpoint`, :mod:`.resume`), data
loaders (:mod:`.data`), launch helpers (:mod:`.launch`) and callbacks (:mod:`.callbacks`)."""

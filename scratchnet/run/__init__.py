"""Training runs, from Python as from the command line (``scratchnet train`` is a thin shell).

    import scratchnet
    run = scratchnet.train("lenet", epochs=2, out="runs/lenet")
    run.history                       # one metrics dict per epoch
    run.evaluate()["accuracy"]
    run.predict(["my_digit.png"])     # (1, 10) class probabilities
    scratchnet.Run.resume("runs/lenet").train(epochs=4)

Layers: the CLI parses and prints; :class:`Run` checks settings, builds the model, optimizer
and scheduler from the recipe, loads the data, writes the folder and handles Ctrl-C/SIGTERM;
``training.fit`` is the loop; models, data and checkpoint files sit below it.
"""
from .folder import CHECKPOINT, EVENTS, METRICS, find, read_metrics
from .training_run import Interrupted, NothingToTrain, Run, train
from .settings import TRAIN_SETTINGS, SettingsError

__all__ = ["Run", "train", "Interrupted", "NothingToTrain", "SettingsError", "TRAIN_SETTINGS",
           "CHECKPOINT", "METRICS", "EVENTS", "find", "read_metrics"]

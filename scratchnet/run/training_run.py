"""A training run: a model, its recipe and data settings, its training state and its folder.

    run = Run.create("lenet", epochs=2, out="runs/lenet").train()
    run.history, run.evaluate(), run.predict(images)
    Run.resume("runs/lenet").train(epochs=4)
    Run.load("mnist_cnn.pt").evaluate()

``scratchnet train`` is this class with flags for keyword arguments: the same checks, the same
folder, bitwise the same checkpoint for the same settings.
"""
import math
import os
from pathlib import Path

import numpy as np

from .. import backend as sn_backend
from .. import checkpoint, models, recipes, tasks, training
from .. import random as sn_random
from ..callbacks import CallbackList, ProgressBar
from ..events import EventLog
from ..fileio import remove_stale_temps
from . import datasets, folder, signals
from .report import confusion, test_report
from .settings import (DATA_SETTINGS, TRAIN_SETTINGS, TWO_DIGIT_DATASET, SettingsError,
                       checked, new_config, reject_misplaced, resumed_config, two_digit)


class NothingToTrain(SettingsError):
    """The run has trained the epochs asked for already; nothing was changed."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint it can resume from.

    ``signal`` (the number), ``epoch`` and ``batch`` (where it stopped: epoch in progress,
    batches done in it) and ``checkpoint`` (the file saved).
    """

    def __init__(self, signal, epoch, batch, checkpoint_file):
        super().__init__(f"interrupted at epoch {epoch}, batch {batch}; saved {checkpoint_file}")
        self.signal, self.epoch, self.batch, self.checkpoint = signal, epoch, batch, checkpoint_file


def _run_checkpoint(path, *keys):
    """A checkpoint written by a training run: its meta must hold ``keys``."""
    ckpt = checkpoint.load_checkpoint(path)
    missing = [k for k in ("model", "config", *keys) if k not in ckpt.meta]
    if missing:
        raise checkpoint.CheckpointError(
            f"{path}: not a checkpoint of `scratchnet train` (no {', '.join(missing)} in it)")
    return ckpt


def _inference_config(name, saved):
    """A loaded model's config: what its checkpoint saved, over the recipe's settings (a
    checkpoint from before dtype or normalize were saved gets float32 and the recipe's)."""
    config = {"model": name, **recipes.as_config(recipes.resolve(name)), "dtype": "float32",
              "backend": sn_backend.get_backend(),
              "dataset": TWO_DIGIT_DATASET if two_digit(name) else "mnist"}
    config.update(saved)
    config["model"] = name
    return config


class Run:
    """A model trained (or to be trained) from a recipe; see the module docstring.

    Attributes: ``config`` (every setting, as saved), ``model``, ``optimizer`` and ``scheduler``
    (None for a run loaded for inference only), ``out`` (the run folder as a Path, or None),
    ``history`` (one metrics dict per epoch), ``test`` (the final test report, once trained).
    """

    def __init__(self, config, model, out=None, optimizer=None, scheduler=None, state=None,
                 resumed=False, finished=False):
        self.config, self.model = config, model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.out = None if out is None else Path(out)
        self.state, self.resumed, self.finished = state, resumed, finished
        self.task = tasks.for_model(models.OUTPUTS[config["model"]])
        self.test = None
        self.train_size = self.batches_per_epoch = None
        self.target_epochs = None
        self._rng_state = sn_random.get_rng_state()

    @property
    def history(self):
        """One dict per epoch trained: train_loss, train_accuracy, val_*, lr, seconds, ..."""
        return self.state.history if self.state is not None else []

    @property
    def epochs_done(self):
        return self.state.epoch if self.state is not None else 0

    def describe(self):
        """One line: "lenet on 60000 mnist images (SGD lr 0.001 ...), numba backend, ..."."""
        c = self.config
        images = "" if self.train_size is None else f" on {self.train_size} " + \
            f"{datasets.describe(c, 'train')} images"
        return (f"{c['model']}{images} ({recipes.from_config(c).describe()}), {c['backend']} "
                f"backend, {c['dtype']}; run folder {self.out}")

    @property
    def checkpoint_file(self):
        return None if self.out is None else self.out / folder.CHECKPOINT

    # ----- making one -----

    @classmethod
    def create(cls, model=None, **settings):
        """A new run of ``model`` with its recipe, ``settings`` (train's keywords) over it.

        Everything is checked here, the output folder included, before any work is done.
        """
        given = checked({"model": model, **settings})
        out = given.pop("out", None)
        config = new_config(given)
        out = out or folder.default_out(config["model"])
        if os.path.exists(os.path.join(out, folder.CHECKPOINT)):
            raise SettingsError(f"{out} already holds a run; continue it with resume={out} "
                                f"or choose another out=")
        folder.check_usable(out)
        return cls._build(config, out)

    @classmethod
    def resume(cls, path, **settings):
        """The run saved in ``path`` (its folder or checkpoint), ready to train on exactly as if
        it had never stopped. ``settings`` may change only what leaves its numbers alone
        (epochs, data_dir, limit_test, n_test, allow_pickle, download, backend, out)."""
        given = checked(settings)
        path = folder.checkpoint_path(path)
        ckpt = _run_checkpoint(path, "progress", "rng_state")
        config = resumed_config(ckpt.meta["config"], given, path)
        out = given.get("out") or os.path.dirname(os.path.abspath(path))
        folder.check_usable(out)
        if os.path.isdir(out):
            remove_stale_temps(out)  # what a save killed mid-write left behind
        run = cls._build(config, out, ckpt, path)
        run.target_epochs = given.get("epochs")
        return run

    @classmethod
    def _build(cls, config, out, ckpt=None, source=None):
        recipe = recipes.from_config(config)
        with sn_backend.use_backend(config["backend"]):
            sn_random.manual_seed(config["seed"])
            model = models.build(config["model"], dtype=config["dtype"])
            optimizer = recipes.make_optimizer(recipe, model.parameters())
            scheduler = recipes.make_scheduler(recipe, optimizer)
            if ckpt is None:
                shuffle = np.random.default_rng([config["seed"], 1])
                state = training.TrainState(shuffle_state=shuffle.bit_generator.state)
            else:
                checkpoint.load_weights(model, ckpt.model_state, source, config["model"])
                state = cls._restore(source, ckpt, optimizer, scheduler)
        return cls(config, model, out, optimizer, scheduler, state, resumed=ckpt is not None,
                   finished=bool(ckpt and ckpt.meta.get("finished")))

    @staticmethod
    def _restore(path, ckpt, optimizer, scheduler):
        """Optimizer and scheduler state, dropout generator and TrainState of a checkpoint."""
        try:
            optimizer.load_state_dict(ckpt.optimizer_state)
            if scheduler is not None:
                scheduler.load_state_dict(ckpt.meta["scheduler"])
            sn_random.set_rng_state(ckpt.meta["rng_state"])
            return training.TrainState.from_dict(ckpt.meta["progress"])
        except (KeyError, ValueError, TypeError) as e:
            raise checkpoint.CheckpointError(
                f"{path}: cannot resume from it: its optimizer, scheduler, RNG or progress state "
                f"is damaged ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path, model=None):
        """A trained model for evaluate / predict / export, from a run folder, its
        checkpoint.npz, or a PyTorch state dict (.pt/.pth; ``model`` inferred from its keys
        and shapes unless given)."""
        if model is not None:
            TRAIN_SETTINGS["model"][0]("model", model)
        if checkpoint.is_torch_file(path):
            state = checkpoint.load_torch_state_dict(path)
            name = model or checkpoint.infer_model(state)
            dtype = np.result_type(*state.values()).name if state else "float32"
            config = _inference_config(name, {"dtype": dtype})
            progress, out, finished = None, None, True
        else:
            path = folder.checkpoint_path(path)
            ckpt = _run_checkpoint(path)
            state, name = ckpt.model_state, ckpt.meta["model"]
            if model is not None and model != name:
                raise checkpoint.CheckpointError(f"{path} holds a {name} model, not {model}")
            if not isinstance(ckpt.meta["config"], dict) or name not in models.names():
                raise checkpoint.CheckpointError(f"{path}: its model or config is damaged")
            config = _inference_config(name, ckpt.meta["config"])
            out = os.path.dirname(os.path.abspath(path))
            progress, finished = ckpt.meta.get("progress"), ckpt.meta.get("finished", False)
        built = models.build(name, dtype=config["dtype"])
        checkpoint.load_weights(built, state, path, name)
        train_state = training.TrainState.from_dict(progress) if progress else None
        return cls(config, built.eval(), out, state=train_state, finished=finished)

    # ----- training -----

    def train(self, epochs=None, callbacks=None, no_progress=False):
        """Train until ``epochs`` epochs are done (default: the recipe's, or resume's epochs=),
        then test, and write the checkpoint, metrics and plots. Returns the run.

        ``callbacks``: observers (:mod:`scratchnet.callbacks`). Ctrl-C or SIGTERM stops at the
        end of the batch, saves, and raises :class:`Interrupted`. NothingToTrain (and nothing
        changes) when the run has done ``epochs`` already.
        """
        if self.optimizer is None:
            raise SettingsError("this run was loaded for inference only; Run.resume(path) "
                                "continues training")
        if epochs is not None:
            TRAIN_SETTINGS["epochs"][0]("epochs", epochs)
        target = epochs or self.target_epochs or self.config["epochs"]
        done = self.epochs_done
        if target < done or (target == done and self.finished):
            raise NothingToTrain(
                f"nothing to train: {self.out} has trained {done} epoch{'s' * (done != 1)} "
                f"already; pass epochs=N with N > {done} to train more")
        self.config["epochs"] = target
        self.finished, self.test = False, None  # until this training's test report is written
        observers = [EventLog()] if self.out is not None else []
        observers += [] if no_progress else [ProgressBar()]
        observers = CallbackList(observers + list(callbacks or ()))
        with sn_backend.use_backend(self.config["backend"]), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            test_images, test_labels = datasets.load("test", self.config,
                                                     self.config["limit_test"])
            train, val = datasets.train_and_val(self.config, self.model)
            self.train_size = len(train[1])
            self.batches_per_epoch = math.ceil(self.train_size / self.config["batch_size"])
            sn_random.set_rng_state(self._rng_state)
            status = "failed"
            observers.on_train_start(self)
            try:
                self._fit(train, val, observers)
                x_test = datasets.inputs(test_images, self.model, self.config["normalize"])
                result = training.evaluate(self.model, self.task, x_test, test_labels, 1000)
                self.test, matrices = test_report(result, test_labels)
                self.finished = True
                self.save()
                if self.out is not None:
                    title = f"{self.config['model']} on {self.config['dataset']}"
                    folder.write_plots(self.out, title, self.history, self.test, test_images,
                                       test_labels, result["predictions"], matrices,
                                       datasets.classes(self.config["dataset"]))
                status = "finished"
            except KeyboardInterrupt:  # Interrupted, or a second Ctrl-C
                status = "interrupted"
                raise
            finally:
                self._rng_state = sn_random.get_rng_state()
                observers.on_train_end(self, status)
        return self

    def _fit(self, train, val, observers):
        shuffle = np.random.default_rng([self.config["seed"], 1])

        def on_epoch(record):
            self.save()
            observers.on_epoch_end(self, record)

        with signals.stop_requests() as requested:
            try:
                training.fit(self.model, self.task, self.optimizer, train, val,
                             self.config["epochs"], self.config["batch_size"], shuffle,
                             self.state, should_stop=requested,
                             on_batch=lambda info: observers.on_batch_end(self, info),
                             on_epoch=on_epoch, scheduler=self.scheduler)
            except training.NonFiniteLoss as e:
                saved = (f"the run folder keeps the checkpoint of epoch {self.state.epoch}"
                         if self.state.epoch else "no checkpoint was saved")
                raise training.NonFiniteLoss(f"{e}; {saved}") from None
            except training.TrainingInterrupted:
                self.save()
                raise Interrupted(requested(), self.state.epoch + 1, self.state.batch,
                                  self.checkpoint_file) from None

    def save(self):
        """Write checkpoint.npz and metrics.json (the test report too, once trained)."""
        if self.out is None:
            return
        meta = {"model": self.config["model"], "config": self.config,
                "progress": self.state.to_dict(), "rng_state": sn_random.get_rng_state(),
                "finished": self.finished}
        if self.scheduler is not None:
            meta["scheduler"] = self.scheduler.state_dict()
        metrics = {"model": self.config["model"], "config": self.config,
                   "epochs": self.history, **(self.test or {})}
        folder.save(self.out, meta, self.model.state_dict(), self.optimizer.state_dict(),
                    metrics)

    # ----- using it -----

    def evaluate(self, *, data_dir=None, dataset=None, limit_test=None, n_test=None,
                 data_seed=None, allow_pickle=False, download=False, batch_size=1000,
                 normalize=None, backend=None):
        """Loss, accuracy, per-class accuracy and confusion matrix on the test set.

        The test data's keywords are ``scratchnet evaluate``'s flags (default: MNIST's test set,
        for a two-digit run the run's own test set). ``normalize``: (mean, std) instead of
        the run's. ``backend``: the op implementation (default: the selected one). Returns a
        dict: ``model``, ``data`` (where the images came from), ``samples``, ``loss``,
        ``accuracy`` (two digits: also each digit's loss and accuracy, ``accuracy_both``),
        ``per_class_accuracy``, ``confusion_matrix`` (two digits: a list, one per digit),
        ``predictions``, ``labels`` and ``classes`` (names, or None).
        """
        TRAIN_SETTINGS["batch_size"][0]("batch_size", batch_size)
        normalization = self._normalization(normalize)
        data = {"data_dir": data_dir, "dataset": dataset, "limit_test": limit_test,
                "n_test": n_test, "data_seed": data_seed, "allow_pickle": allow_pickle,
                "download": download}
        config = self._test_data(checked(data, DATA_SETTINGS, "evaluate"))
        if backend is not None:
            TRAIN_SETTINGS["backend"][0]("backend", backend)
        with sn_backend.use_backend(backend or sn_backend.get_backend()), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            images, labels = datasets.load("test", config, config.get("limit_test"))
            x = datasets.inputs(images, self.model, normalization)
            result = training.evaluate(self.model.eval(), self.task, x, labels, batch_size)
        matrices = confusion(labels, result["predictions"])
        return {"model": self.config["model"], "data": datasets.describe(config, "test"),
                "samples": len(labels),
                **{k: v for k, v in result.items() if k != "predictions"},
                "per_class_accuracy": [training.per_class_accuracy(m) for m in matrices]
                if labels.ndim == 2 else training.per_class_accuracy(matrices),
                "confusion_matrix": matrices, "predictions": result["predictions"],
                "labels": labels, "classes": datasets.classes(config["dataset"])}

    def test_set(self, *, data_dir=None, dataset=None, limit_test=None, n_test=None,
                 data_seed=None, allow_pickle=False, download=False):
        """(uint8 images, labels) of the test set :meth:`evaluate` scores with the same
        keywords: MNIST's, or a two-digit run's own. Labels are (N,), or (N, 2) for two."""
        data = {"data_dir": data_dir, "dataset": dataset, "limit_test": limit_test,
                "n_test": n_test, "data_seed": data_seed, "allow_pickle": allow_pickle,
                "download": download}
        config = self._test_data(checked(data, DATA_SETTINGS, "evaluate"))
        return datasets.load("test", config, config.get("limit_test"))

    def _normalization(self, normalize):
        if normalize is None:
            return self.config["normalize"]
        try:
            mean, std = (float(v) for v in normalize)
        except (TypeError, ValueError):
            raise SettingsError(f"normalize= takes (mean, std), got {normalize!r}") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise SettingsError(f"normalize= mean {mean:g}, std {std:g}: expected a finite mean "
                                f"and a positive std")
        return [mean, std]

    def _test_data(self, given):
        """The config ``datasets.load`` needs for the test set ``evaluate`` scores."""
        name, config = self.config["model"], self.config
        reject_misplaced(given, name)
        if config["dataset"] != TWO_DIGIT_DATASET:
            return {"data_dir": given.get("data_dir"),
                    "dataset": given.get("dataset", config["dataset"]),
                    "download": given.get("download", False),
                    "limit_test": given.get("limit_test")}
        # the run's own test set (its files, or generated as it was), unless given says else
        return {"dataset": TWO_DIGIT_DATASET,
                "data_dir": given.get("data_dir", config.get("data_dir")),
                "data_seed": given.get("data_seed", config.get("data_seed", 1)),
                "n_train": config.get("n_train", 40000),
                "n_test": given.get("n_test", config.get("n_test", 4000)),
                "allow_pickle": given.get("allow_pickle", False),
                "limit_test": given.get("limit_test")}

    def inputs(self, images):
        """Image files (paths, made MNIST-like as ``scratchnet predict`` does) or uint8 images
        (N, H, W) -> the model's input batch, normalised as the run was trained."""
        from ..preprocess import load_digit, load_two_digit  # PIL is needed only here
        load = load_two_digit if two_digit(self.config["model"]) else load_digit
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if not isinstance(images, np.ndarray):
            images = np.stack([load(os.fspath(i)) if isinstance(i, (str, os.PathLike))
                               else np.asarray(i) for i in images])
        if images.ndim == 2:  # one image
            images = images[None]
        return datasets.inputs(images, self.model, self.config["normalize"])

    def predict(self, images):
        """Class probabilities, (N, 10), or (N, 2, 10) for the two-digit models.

        ``images``: image files (any size or colour, made MNIST-like first, as ``scratchnet
        predict`` does), or uint8 images shaped like the dataset's: (N, 28, 28) or one
        (28, 28); (N, 42, 28) for two digits.
        """
        x = self.inputs(images)
        return self.task.probabilities(self.model.eval()(x))

    def predict_files(self, paths):
        """[(path, probabilities or the error that image gave)], every file tried."""
        from ..preprocess import ImageError
        results = []
        for path in paths:
            try:
                results.append((path, self.predict([path])[0]))
            except (ImageError, OSError, ValueError) as e:
                results.append((path, e))
        return results

    def export(self, path):
        """Write the weights as a PyTorch state dict that reference.models' twin loads."""
        checkpoint.save_torch_state_dict(path, self.model.state_dict(),
                                         expected=self.config["model"])
        return Path(path)


def train(model=None, *, epochs=None, batch_size=None, lr=None, optimizer=None, momentum=None,
          nesterov=None, weight_decay=None, val_split=None, scheduler=None, seed=1, backend=None,
          dtype="float32", data_dir=None, dataset=None, limit_train=None, limit_test=None,
          n_train=None, n_test=None, data_seed=None, allow_pickle=False, download=False,
          out=None, resume=None, dry_run=False, no_progress=False, callbacks=None):
    """Train ``model`` with its recipe, the keywords over it, or continue the run in ``resume``
    (a run folder or its checkpoint); returns the :class:`Run`. The keywords are the flags of
    ``scratchnet train``, with the same defaults (None: the recipe's); see ``--help``.

        run = scratchnet.train("lenet", epochs=2, out="runs/lenet")
    """
    given = dict(locals())
    settings = {k: v for k, v in given.items()
                if k in TRAIN_SETTINGS and k != "model" and v != TRAIN_SETTINGS[k][1]}
    if resume is not None:
        run = Run.resume(resume, model=model, **settings)
    else:
        run = Run.create(model, **settings)
    return run.train(callbacks=callbacks, no_progress=no_progress)

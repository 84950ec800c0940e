"""Deep-learning segmentation: model packages, sliding-window inference, patch training.

torch and MONAI are imported lazily inside the submodules' functions, so importing this package (and
``medseg --help``) stays fast and MedSegLib still works without the ``dl`` extra installed.

Submodules:
- ``model_package``: the MedSeg model package (``medseg-model.json`` + weights), validation, user model dir;
- ``sliding_window``: MONAI-exact sliding-window inference streamed by slab (bounded memory);
- ``preprocessing``: orientation / spacing / normalisation / crop declared by a model, and their exact undo;
- ``inference``: volume node or file in, segmentation node / label map out;
- ``training``: patch-based training (DiceCE, validation Dice, checkpoints, DDP under torchrun);
- ``monai_bundle`` / ``nnunet_import``: turn third-party model folders into MedSeg model packages.
"""

"""train.py defaults that the study reads without importing the training stack (its dry run and cost estimate must
stay light): one place, so a grid costed or checked before it runs sees what its cells will do."""

NUM_TRAIN_EPOCHS = 10.0
VAL_FRACTION = 0.1  # share of train carved out as validation when a dataset has none (or too small a one)
SAVE_MODEL = True

"""Attribute labellers for any model: the CNN trained from a folder of labelled images, the zero-shot CLIP
labeller, the CelebA attribute predictor, the label-table calibration, and the readers of users' labelled image
folders."""

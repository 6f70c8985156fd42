"""Judging a representation on the frozen backbone: the weighted kNN monitor (``knn``) and the linear protocol
(``lincls``), shared by training and ``fastmoco-lincls``."""

"""Network definitions used by pretraining and, through the AlexNet trunk, by transfer."""

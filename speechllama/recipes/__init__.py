"""The recipes a user runs end to end: the demo (and its presets) and the paper's experiment,
on the stage runner they share."""

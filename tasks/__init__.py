"""Built-in tasks, one module each (installed as ``ecomnlp.tasks``)."""

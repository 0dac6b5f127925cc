r"""Built-in data: generators that run without any download."""

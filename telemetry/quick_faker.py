"""A Faker for the value pools, with cheap stand-ins for its slowest providers."""

from faker import Faker


class QuickFaker(Faker):
    """Faker with cheap stand-ins for its slowest providers (text and URIs cost ~0.5 ms a call, words 25 us)."""

    def __init__(self, seed: int) -> None:
        super().__init__("en_US")
        self.seed_instance(seed)
        self._sentences = [self.sentence(nb_words=self.random.randint(6, 18)) for _ in range(300)]
        self._uris = [self.uri() for _ in range(48)]
        self._words = self.get_words_list()

    def prose(self, chars: int) -> str:
        """Sentences drawn from a pre-made pool, about `chars` long."""
        parts: list[str] = []
        length = 0
        while length < chars:
            sentence = self.random.choice(self._sentences)
            parts.append(sentence)
            length += len(sentence) + 1
        return " ".join(parts)

    def term(self) -> str:
        return self.random.choice(self._words)

    def link(self) -> str:
        return self.random.choice(self._uris)

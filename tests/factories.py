from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from scripts_app.services.scripts import script_create

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def save_password(self, create, extracted, **kwargs):
        if create:
            self.save()


def make_script(owner, name: str, source: str, **kwargs):
    """A script through the same service the API uses, so it has its first version."""
    return script_create(owner=owner, name=name, source=source, **kwargs)


def make_dataset(owner, name: str, frame, **kwargs):
    """A dataset uploaded as CSV through the same service the API uses."""
    import io

    from scripts_app.services.datasets import dataset_create

    upload = io.BytesIO(frame.to_csv(index=False).encode())
    dataset, _ = dataset_create(owner=owner, name=name, upload=upload, filename=f"{name}.csv", **kwargs)
    return dataset

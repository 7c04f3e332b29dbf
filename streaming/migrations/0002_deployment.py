import uuid

from django.db import migrations, models


def create_deployment(apps, schema_editor) -> None:
    apps.get_model("streaming", "Deployment").objects.get_or_create(
        id=1, defaults={"uid": uuid.uuid4()}
    )


class Migration(migrations.Migration):
    dependencies = [("streaming", "0001_api_token")]

    operations = [
        migrations.CreateModel(
            name="Deployment",
            fields=[
                (
                    "id",
                    models.PositiveSmallIntegerField(
                        default=1, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("uid", models.UUIDField(editable=False, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("id", 1)), name="deployment_is_one_row"
                    )
                ],
            },
        ),
        migrations.RunPython(create_deployment, migrations.RunPython.noop),
    ]

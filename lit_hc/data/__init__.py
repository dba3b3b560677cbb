"""Data modules for text (TextDataModule) and images (ImageFolderDataModule)."""
import warnings


def stateful_loader(*args, **kwargs):
    """torchdata's StatefulDataLoader (the loader whose position Lightning checkpoints, for an exact resume).

    Its constructor calls a deprecated torch API and warns about it every time; the warning says nothing
    actionable to a user of this project, so it is silenced here, for this call and by its exact message only.
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return StatefulDataLoader(*args, **kwargs)

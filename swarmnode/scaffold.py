"""Files a site needs before it runs: node key + site.toml, genesis, invitations.

`swarmnode init`, `genesis`, `invite` and `join` are thin wrappers over these
functions. Everything here is plain file work (no network, no trio), so tests
drive it directly and the CLI only formats results and maps errors to exit
codes.

Formats
- Key file: `crypto.identity.NodeIdentity.save` (mode 0600, refuses to overwrite).
- site.toml: rendered by `render_site_toml`, commented, loadable by
  `swarmnode.config.NodeConfig.load` (a test checks every rendering loads).
- genesis.cbor: `consensus.genesis.Genesis` canonical CBOR (its hash is the chain id).
- invite.cbor: an `Invite` in canonical CBOR: the genesis bytes (exactly, so the
  joiner computes the same chain id) and bootstrap multiaddrs with /p2p/ ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, cast, final

from consensus.genesis import (
    DEFAULT_CKKS_PARAMS,
    DecryptionThreshold,
    FoundingMember,
    Genesis,
    GenesisError,
    JoinPolicy,
    MergeParam,
    PrivacyParams,
    StoppingRule,
    Timeouts,
    TrainingParams,
)
from consensus.transactions import JoinRequest, TxSigner
from crypto import cbor
from crypto.errors import KeyFileError, ProtocolError
from crypto.identity import NodeId, NodeIdentity
from models.data import SKLEARN_DATASETS, DatasetError
from models.schema import DataSchema
from models.spec import ModelSpec, SpecError, logistic_regression, mlp
from models.structure import spec_structure
from models.tables import infer_schema

from .addresses import advertised_addresses, check_dialable, check_listen, circuit_address
from .config import ConfigError, NodeConfig

_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_PEER_ID_PREFIX: Final = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
INVITE_VERSION: Final = 1
JOIN_REQUEST_FILE: Final = "join-request.cbor"
DEFAULT_POSITIVE_CLASS: Final = {"breast_cancer": "malignant"}


class SetupError(Exception):
    """A setup step cannot be done; the message is one line naming the file/value at fault."""


# -- keys and peer ids ----------------------------------------------------------------


def node_id_from_peer_id(text: str) -> NodeId:
    """Decode a libp2p Ed25519 peer id (``12D3KooW...``) without importing libp2p."""
    n = 0
    for ch in text:
        index = _B58.find(ch)
        if index < 0:
            raise ValueError(f"{text!r} is not base58")
        n = n * 58 + index
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    raw = b"\0" * (len(text) - len(text.lstrip("1"))) + raw
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        raise ValueError(f"{text!r} is not an Ed25519 peer id")
    node = NodeId(raw[len(_PEER_ID_PREFIX) :])
    if node.peer_id != text:  # e.g. extra leading '1's
        raise ValueError(f"{text!r} is not a canonical peer id")
    return node


def parse_public_key(text: str) -> NodeId:
    """A member's key as a peer id, 64 hex digits, or a key file path."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return NodeId(bytes.fromhex(text))
    if text.startswith("12D3KooW"):
        return node_id_from_peer_id(text)
    path = Path(text)
    if path.exists():
        try:
            return NodeIdentity.load(path).node_id
        except KeyFileError as exc:
            raise SetupError(str(exc)) from None
    raise SetupError(f"{text!r}: expected a peer id (12D3KooW...), 64 hex digits or an existing key file")


def load_identity(path: Path) -> NodeIdentity:
    try:
        return NodeIdentity.load(path)
    except KeyFileError as exc:
        raise SetupError(str(exc)) from None


def transport_address(host: str, port: int) -> str:
    return f"/ip4/{host}/tcp/{port}"


def peer_address(host: str, port: int, node: NodeId) -> str:
    return f"{transport_address(host, port)}/p2p/{node.peer_id}"


def member_line(name: str, node: NodeId, addresses: Sequence[str]) -> str:
    """What a site hands to the genesis organiser: ``NAME=PEER_ID[@MULTIADDR,MULTIADDR...]``."""
    return f"{name}={node.peer_id}" + (f"@{','.join(addresses)}" if addresses else "")


def site_addresses(settings: SiteSettings) -> tuple[str, ...]:
    """The addresses a new site's peers will dial (its member line); SetupError naming the
    option at fault if one cannot be dialled, or if the site listens on a fixed port of every
    interface without saying where (port 0 and no `advertise`: a site that only dials out)."""
    try:
        check_listen(settings.listen)
    except ValueError as exc:
        raise SetupError(f"--listen: {exc}") from None
    try:
        circuits = tuple(circuit_address(relay) for relay in settings.relays)
    except ValueError as exc:
        raise SetupError(f"--relay: {exc}") from None
    if circuits and not settings.advertise:  # behind NAT: its own address is nobody's to dial
        return circuits
    try:
        addresses = advertised_addresses(settings.listen, settings.port, settings.advertise)
    except ValueError as exc:
        raise SetupError(f"--advertise: {exc}") from None
    if not addresses and settings.port != 0:
        raise SetupError(
            f"--listen {settings.listen}: binds every interface, which no peer can dial; "
            "give --advertise with this site's IP or DNS name as the other sites reach it"
            " (or --relay, behind NAT)"
        )
    return addresses + circuits


# -- site.toml ------------------------------------------------------------------------


def _toml(value: object) -> str:
    """A TOML literal for str/int/float/bool/list (JSON string escapes are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSettings:
    """Everything `render_site_toml` writes; defaults are what `swarmnode init` uses."""

    name: str
    data: str = "breast_cancer"
    label_column: str | None = None
    positive_class: str | None = None
    test_source: str | None = None
    model: ModelSpec
    listen: str = "127.0.0.1"
    port: int = 7000
    advertise: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()  # behind NAT: reserve on these, advertise <relay>/p2p-circuit
    key_file: str = "node.key"
    storage_dir: str = "state"
    genesis: str = "genesis.cbor"
    log_level: str = "info"
    epochs: int | None = None  # local epochs per round: the genesis's sync_every (None: unset)
    batch_size: int = 32
    lr: float = 1e-3
    validation_fraction: float = 0.2
    weightage: int = 1
    seed: int = 0
    merge_timeout: float = 3600.0
    data_kind: str = "table"  # or "image_folder": `data` is a folder of class folders
    augment: str = "none"  # image folders: "affine" | "affine_flip"
    standardize: str = "swarm"


def _optional_data_lines(s: SiteSettings) -> list[str]:
    """The [data] keys a site may leave out: set, or commented out with an example."""
    lines = []
    if s.data_kind != "table":
        lines.append(f"kind = {_toml(s.data_kind)}   # one sub-folder of PNG/JPEG images per class")
        lines.append(f"augment = {_toml(s.augment)}   # training images only: none | affine | affine_flip")
        lines.append("# image_size = [32, 32]       # height, width (default: the model's image_shape)")
    if s.label_column is not None:
        lines.append(f"label_column = {_toml(s.label_column)}")
    else:
        lines.append('# label_column = "diagnosis"   # required for .csv and .h5ad files')
    if s.positive_class is not None:
        lines.append(f"positive_class = {_toml(s.positive_class)}")
    else:
        lines.append('# positive_class = "AML"       # train "this class vs the rest"')
    if s.test_source is not None:
        lines.append(f"test_source = {_toml(s.test_source)}")
    else:
        lines.append('# test_source = "test.npz"     # held-out data to report test metrics on')
    return lines


def _epochs_line(epochs: int | None) -> str:
    return "# epochs = 1" if epochs is None else f"epochs = {epochs}"


def _model_lines(m: ModelSpec) -> list[str]:
    """The [model] keys of `m`: those its kind needs, and the others only when set."""
    lines = [f"kind = {_toml(m.kind)}", f"n_features = {m.n_features}", f"n_classes = {m.n_classes}"]
    if m.hidden:
        lines.append(f"hidden = {_toml(list(m.hidden))}")
    if m.dropout:
        lines.append(f"dropout = {_toml(m.dropout)}")
    if m.batch_norm:
        lines.append("batch_norm = true")
    if m.image_shape is not None:
        lines.append(f"image_shape = {_toml(list(m.image_shape))}")
    if m.conv_channels:
        lines.append(f"conv_channels = {_toml(list(m.conv_channels))}")
    return lines


def render_site_toml(s: SiteSettings) -> str:
    """A commented site.toml; every key is one `NodeConfig.load` accepts."""
    optional_data = _optional_data_lines(s)
    model_lines = _model_lines(s.model)
    return f"""\
# swarmnode site configuration for {s.name!r}.
# Relative paths are relative to this file's directory. Unknown keys are errors.
# Any key can be overridden at start: swarmnode run --config site.toml --set training.lr=0.01

[node]
name = {_toml(s.name)}            # this site's display name on the ledger
key_file = {_toml(s.key_file)}      # Ed25519 node key (mode 0600); its peer id is the site's identity
storage_dir = {_toml(s.storage_dir)}      # ledger, key-epoch secrets, metrics, final model
log_level = {_toml(s.log_level)}        # debug | info | warning | error

[network]
listen = {_toml(s.listen)}     # address to bind (IPv4; "0.0.0.0": every interface)
port = {s.port}              # listen port (0: any free port)
# Where the other sites reach this one: IP addresses, DNS names (port = the one above)
# or multiaddrs such as "/dns4/site.example.org/tcp/7000". Empty: the listen address.
advertise = {_toml(list(s.advertise))}
# Peers dialled first: multiaddrs with /p2p/<peer id>. Founding members are also
# dialled at the addresses recorded in genesis.
bootstrap = {_toml(list(s.bootstrap))}
# Behind NAT or an outbound-only firewall: relays (multiaddrs with /p2p/<relay id>) this
# site reserves a slot on and is dialled through (`swarmnode relay`, or a member relaying).
relays = {_toml(list(s.relays))}

[ledger]
genesis = {_toml(s.genesis)}  # the swarm's genesis file (from `swarmnode genesis` or an invite)
# propose_timeout = 1.0        # seconds before a silent block proposer is skipped
# block_interval = 0.05        # seconds between blocks when transactions wait

[data]
# A bundled dataset ({", ".join(SKLEARN_DATASETS)}), a .csv / .h5ad / .npz file,
# or (kind = "image_folder") a folder with one sub-folder of images per class.
# This data never leaves the site: only (encrypted) model parameters do.
source = {_toml(s.data)}
{chr(10).join(optional_data)}

[data.preprocess]
standardize = {_toml(s.standardize):<17}# "swarm": pooled mean/std via the secure merge; "local"; "none"
log1p = false                  # log(1 + x) first (expression counts)
# genes = ["GENE1", "GENE2"]   # keep exactly these features, in this order

[model]
# Must be identical at every site: genesis records its hash.
# kind: logreg | mlp | cnn | resnet18 | densenet121
{chr(10).join(model_lines)}

[training]
# epochs: local epochs per merge round. The genesis fixes it (training.sync_every; `swarmnode
# genesis --model-from` takes it from here): leave it out, or equal, a different value is refused.
# The genesis also decides when to stop (max_rounds); patience applies to local-only training.
{_epochs_line(s.epochs)}
batch_size = {s.batch_size}
optimizer = "adam"             # sgd | adam | adamw
lr = {_toml(s.lr)}
# Local validation split: its metric is reported with every Ready (median drives early stop).
validation_fraction = {_toml(s.validation_fraction)}
balance_classes = false        # weight the loss by inverse local class frequency

[swarm]
weightage = {s.weightage}                  # 1-100: scales this site's merge weight (samples x weightage)
seed = {s.seed}                       # local training randomness
merge_timeout = {_toml(s.merge_timeout)}        # seconds to wait for one merge before giving up
"""


def infer_model(
    data_source: str,
    *,
    label_column: str | None,
    positive_class: str | None,
    kind: str,
    hidden: tuple[int, ...],
    base_dir: Path,
) -> ModelSpec:
    """A model spec sized for the site's data (features and classes read from the data)."""
    source = data_source
    if source not in SKLEARN_DATASETS and not Path(source).is_absolute():
        source = str(base_dir / source)
    try:  # categorical CSV columns count as one input per category (`models.tables`)
        _, data = infer_schema(source, label_column=label_column, positive_class=positive_class)
    except DatasetError as exc:
        raise SetupError(f"data source: {exc}") from None
    try:
        if kind == "logreg":
            return logistic_regression(data.n_features, data.n_classes)
        if kind == "mlp":
            return mlp(data.n_features, data.n_classes, hidden=hidden or (64, 32), dropout=0.0)
    except SpecError as exc:
        raise SetupError(f"model: {exc}") from None
    raise SetupError(
        f"--model {kind!r}: a table trains logreg or mlp ({' and '.join(IMAGE_KINDS)} train on an image "
        "folder; write a cnn spec into site.toml by hand)"
    )


IMAGE_KINDS: Final = ("resnet18", "densenet121")


def infer_image_model(
    folder: Path, *, kind: str | None, image_size: int, widths: tuple[int, ...]
) -> tuple[ModelSpec, tuple[str, ...]]:
    """The MONAI model (`kind`, default resnet18) for an image folder: its classes are the
    class folders' names and its channels the images' (grey or RGB); (spec, class names)."""
    from models.images import describe_image_folder
    from models.spec import monai_image_net

    kind = kind or "resnet18"
    if kind not in IMAGE_KINDS:
        raise SetupError(
            f"--model {kind}: {folder} is an image folder, which trains {' or '.join(IMAGE_KINDS)}"
        )
    try:
        class_names, channels = describe_image_folder(folder)
        monai_kind = cast(Literal["resnet18", "densenet121"], kind)
        spec = monai_image_net(monai_kind, (channels, image_size, image_size), len(class_names), widths)
    except DatasetError as exc:
        raise SetupError(f"data source: {exc}") from None
    except (SpecError, ValueError) as exc:
        raise SetupError(f"--model {kind} --image-size {image_size}: {exc}") from None
    return spec, class_names


@final
@dataclass(frozen=True, slots=True)
class InitResult:
    config_path: Path
    key_path: Path
    node_id: NodeId
    member_line: str


def init_site(directory: Path, settings: SiteSettings, *, identity: NodeIdentity | None = None) -> InitResult:
    """Create `directory`/node.key and site.toml; refuses to overwrite either."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "site.toml"
    key_path = directory / settings.key_file
    if config_path.exists():
        raise SetupError(f"{config_path}: already exists; remove it or choose another --dir")
    if key_path.exists():
        raise SetupError(f"{key_path}: a key file already exists; remove it or choose another --dir")
    addresses = site_addresses(settings)
    identity = NodeIdentity.generate() if identity is None else identity
    try:
        identity.save(key_path)
    except (KeyFileError, OSError) as exc:
        raise SetupError(f"{key_path}: cannot write key file ({exc})") from None
    text = render_site_toml(settings)
    with config_path.open("x", encoding="utf-8") as f:
        f.write(text)
    NodeConfig.load(config_path)  # what we wrote must load: a bug here is ours, surface it now
    return InitResult(
        config_path=config_path,
        key_path=key_path,
        node_id=identity.node_id,
        member_line=member_line(settings.name, identity.node_id, addresses),
    )


# -- genesis --------------------------------------------------------------------------


def parse_member(text: str) -> FoundingMember:
    """``NAME=KEY@ADDR[,ADDR...]``; KEY is a peer id, 64 hex digits or a key file."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SetupError(f"--member {text!r}: expected NAME=PEER_ID@/ip4/HOST/tcp/PORT")
    key_text, _, addresses_text = rest.partition("@")
    node = parse_public_key(key_text)
    addresses = tuple(a for a in addresses_text.split(",") if a)
    try:
        return FoundingMember(name=name, node_id=node, addresses=addresses)
    except ValueError as exc:
        raise SetupError(f"--member {text!r}: {exc}") from None


def parse_threshold(text: str) -> DecryptionThreshold:
    numerator, sep, denominator = text.partition("/")
    try:
        return DecryptionThreshold(numerator=int(numerator), denominator=int(denominator))
    except ValueError as exc:
        detail = "" if sep else " (expected a/b, e.g. 1/2)"
        raise SetupError(f"--threshold {text!r}: {exc}{detail}") from None


def parse_bounds(text: str) -> tuple[float, float]:
    """``LOW,HIGH``: the range a reported validation metric is clamped to (``--metric-bounds``)."""
    low, _, high = text.partition(",")
    try:
        return float(low), float(high)
    except ValueError:
        raise SetupError(f"--metric-bounds {text!r}: expected LOW,HIGH numbers, e.g. 0,1") from None


def parse_merge_param(text: str, option: str = "--merge-param") -> MergeParam:
    """``NAME=VALUE``: one parameter of the merge rule (e.g. ``mu=0.01`` for fedprox) or,
    given as `option` ``--server-param``, of the server optimizer."""
    name, sep, value = text.partition("=")
    try:
        return MergeParam(name=name.strip(), value=float(value))
    except ValueError:
        detail = "" if sep else " (expected NAME=VALUE, e.g. mu=0.01)"
        raise SetupError(f"{option} {text!r}: VALUE must be a number{detail}") from None


def parse_join_policy(text: str) -> JoinPolicy:
    """``members:K`` (K member approvals) or ``admin:KEY``."""
    mode, _, value = text.partition(":")
    try:
        if mode == "members":
            return JoinPolicy(mode="members", approvals=int(value or "1"))
        if mode == "admin":
            return JoinPolicy(mode="admin", admin=parse_public_key(value))
    except ValueError as exc:
        raise SetupError(f"--join-policy {text!r}: {exc}") from None
    raise SetupError(f"--join-policy {text!r}: expected members:K or admin:KEY")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GenesisSettings:
    name: str
    members: tuple[FoundingMember, ...]
    model: ModelSpec
    merge_method: str = "mean"
    merge_params: tuple[MergeParam, ...] = ()
    server_optimizer: str = "none"
    server_params: tuple[MergeParam, ...] = ()
    secure: bool = True
    min_peers: int = 2
    sync_every: int = 1
    sync_unit: str = "epochs"
    threshold: DecryptionThreshold = field(default_factory=DecryptionThreshold)
    ckks_params: str = DEFAULT_CKKS_PARAMS
    max_rounds: int = 10
    patience: int = 0
    min_delta: float = 0.0
    goal: str = "max"
    select: str = "last"
    metric_bounds: tuple[float, float] = (0.0, 1.0)
    class_weights: str = "none"
    join_policy: JoinPolicy = field(default_factory=JoinPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    nonce: bytes = b""
    statistics_rounds: int = 0  # `swarmnode.trainer.statistics_rounds_for` the founders' preprocessing
    data: DataSchema | None = None  # the agreed table (`models.tables.infer_schema`)
    # Differential privacy (genesis training.privacy): on when clip norm and multiplier are given.
    dp_clip_norm: float | None = None
    dp_noise_multiplier: float | None = None
    dp_delta: float = 1e-5
    dp_epsilon_budget: float | None = None

    def privacy(self) -> PrivacyParams | None:
        """The genesis ``training.privacy`` these settings ask for (ValueError naming the field)."""
        if self.dp_clip_norm is None and self.dp_noise_multiplier is None:
            if self.dp_epsilon_budget is not None:
                raise ValueError(
                    "training.privacy.epsilon_budget: needs --dp-clip-norm and --dp-noise-multiplier"
                )
            return None
        if self.dp_clip_norm is None or self.dp_noise_multiplier is None:
            raise ValueError("training.privacy: --dp-clip-norm and --dp-noise-multiplier go together")
        return PrivacyParams(
            clip_norm=self.dp_clip_norm,
            noise_multiplier=self.dp_noise_multiplier,
            delta=self.dp_delta,
            epsilon_budget=self.dp_epsilon_budget,
        )


def check_member_addresses(members: Sequence[FoundingMember]) -> None:
    """Every founding member's addresses can be dialled (SetupError naming the member and address)."""
    for member in members:
        for i, address in enumerate(member.addresses):
            try:
                check_dialable(address)
            except ValueError as exc:
                where = f"members[{member.name}].addresses[{i}]"
                raise SetupError(f"genesis: {where} = {address!r}: {exc}") from None


def build_genesis(s: GenesisSettings) -> Genesis:
    check_member_addresses(s.members)
    try:
        return Genesis(
            name=s.name,
            members=s.members,
            training=TrainingParams(
                model_spec_hash=s.model.spec_hash(),
                model_structure=spec_structure(s.model),
                merge_method=s.merge_method,
                merge_params=s.merge_params,
                server_optimizer=s.server_optimizer,
                server_params=s.server_params,
                secure=s.secure,
                min_peers=s.min_peers,
                sync_every=s.sync_every,
                sync_unit=s.sync_unit,
                threshold=s.threshold,
                ckks_params=s.ckks_params,
                timeouts=s.timeouts,
                privacy=s.privacy(),
                stopping=StoppingRule(
                    max_rounds=s.max_rounds,
                    patience=s.patience,
                    min_delta=s.min_delta,
                    goal=s.goal,
                    statistics_rounds=s.statistics_rounds,
                    select=s.select,
                    metric_low=s.metric_bounds[0],
                    metric_high=s.metric_bounds[1],
                ),
                class_weights=s.class_weights,
            ),
            join_policy=s.join_policy,
            nonce=s.nonce,
            data=s.data,
        )
    except ValueError as exc:  # the genesis dataclasses name the field: "training.min_peers: ..."
        raise SetupError(f"genesis: {exc}") from None


def founding_schema(config: NodeConfig) -> DataSchema:
    """The table a founding site's data has (`models.tables.infer_schema`), for its genesis:
    feature columns and classes by name, CSV categorical columns with their categories; with
    ``[data.preprocess] genes`` the features are those genes (the model's inputs)."""
    data = config.data
    where = f"{config.source or 'site config'}: [data] source"
    if data.source is None:
        raise SetupError(f"{where} is not set: genesis records the founding site's table from it")
    try:
        schema, _ = infer_schema(
            data.source, label_column=data.label_column, positive_class=data.positive_class
        )
        if data.preprocess.genes is not None:
            schema = DataSchema(feature_names=data.preprocess.genes, class_names=schema.class_names)
    except (DatasetError, OSError, ValueError) as exc:
        raise SetupError(
            f"{where}: {exc} (genesis records the founding site's feature and class names from it; "
            "--no-schema founds a swarm that does not compare them)"
        ) from None
    if schema.n_features != config.model.n_features or len(schema.class_names) != config.model.n_classes:
        raise SetupError(
            f"{where}: {schema.n_features} model inputs and {len(schema.class_names)} classes, but [model] "
            f"has n_features = {config.model.n_features} and n_classes = {config.model.n_classes}"
        )
    return schema


def save_genesis(genesis: Genesis, path: Path) -> None:
    try:
        genesis.save(path)
    except GenesisError as exc:
        raise SetupError(str(exc)) from None
    except OSError as exc:
        raise SetupError(f"{path}: cannot write genesis ({exc.strerror})") from None


def load_genesis(path: Path) -> Genesis:
    try:
        return Genesis.load(path)
    except GenesisError as exc:
        raise SetupError(str(exc)) from None


# -- invitations ----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    """What a joining site needs: the exact genesis bytes and whom to dial."""

    version: int
    genesis: bytes
    bootstrap: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.version != INVITE_VERSION:
            raise ValueError(f"version: this node reads invite version {INVITE_VERSION}")
        if not self.bootstrap:
            raise ValueError("bootstrap: an invite needs at least one address to dial")
        for address in self.bootstrap:
            if not address.startswith("/") or "/p2p/" not in address:
                raise ValueError(f"bootstrap: {address!r} is not a multiaddr with /p2p/<peer id>")


def make_invite(config: NodeConfig, extra_bootstrap: Sequence[str] = ()) -> Invite:
    """An invite from a member's site: its own address, the founders' and `extra_bootstrap`."""
    genesis = load_genesis(config.ledger.genesis)
    me = load_identity(config.node.key_file).node_id
    addresses: list[str] = list(extra_bootstrap)
    addresses += [f"{a}/p2p/{me.peer_id}" for a in config.network.advertised() if "/p2p/" not in a]
    for member in genesis.members:
        addresses += [f"{a}/p2p/{member.node_id.peer_id}" for a in member.addresses if "/p2p/" not in a]
    addresses += list(config.network.bootstrap)
    unique = tuple(dict.fromkeys(addresses))
    try:
        return Invite(version=INVITE_VERSION, genesis=genesis.to_bytes(), bootstrap=unique)
    except ValueError as exc:
        raise SetupError(f"invite: {exc}") from None


def save_invite(invite: Invite, path: Path) -> None:
    try:
        with path.open("xb") as f:
            f.write(cbor.dumps_dataclass(invite))
    except FileExistsError:
        raise SetupError(f"{path}: already exists; refusing to overwrite") from None


def load_invite(path: Path) -> tuple[Invite, Genesis]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SetupError(f"{path}: cannot read invite ({exc.strerror})") from None
    try:
        invite = cbor.loads_dataclass(Invite, data)
        genesis = Genesis.from_bytes(invite.genesis)
    except (ProtocolError, GenesisError) as exc:
        raise SetupError(f"{path}: not a valid invite: {exc}") from None
    return invite, genesis


def join_site(directory: Path, invite_path: Path, settings: SiteSettings) -> tuple[InitResult, Genesis]:
    """Create a joining site: key, site.toml with the invite's bootstrap, the genesis file and
    ``join-request.cbor`` (its signed `JoinRequest`, which a member submits with `swarmnode approve`).

    The model in `settings` must be the one genesis records (checked by hash).
    """
    invite, genesis = load_invite(invite_path)
    if settings.model.spec_hash() != genesis.training.model_spec_hash:
        raise SetupError(
            f"{invite_path}: the swarm trains a different model than {settings.model.kind} with "
            f"{settings.model.n_features} features and {settings.model.n_classes} classes "
            "(spec hash differs); pass the --model and data the swarm uses"
        )
    directory.mkdir(parents=True, exist_ok=True)
    genesis_path = directory / settings.genesis
    if genesis_path.exists():
        raise SetupError(f"{genesis_path}: already exists; choose another --dir")
    settings = replace(settings, bootstrap=invite.bootstrap)
    result = init_site(directory, settings)
    save_genesis(genesis, genesis_path)
    identity = load_identity(result.key_path)
    request = JoinRequest(name=settings.name, addresses=site_addresses(settings))
    (directory / JOIN_REQUEST_FILE).write_bytes(TxSigner(genesis.chain_id, identity).sign(request))
    return result, genesis


__all__ = [
    "ConfigError",
    "GenesisSettings",
    "InitResult",
    "Invite",
    "SetupError",
    "SiteSettings",
    "build_genesis",
    "founding_schema",
    "infer_model",
    "init_site",
    "join_site",
    "load_genesis",
    "load_invite",
    "make_invite",
    "member_line",
    "node_id_from_peer_id",
    "parse_join_policy",
    "parse_member",
    "parse_public_key",
    "parse_threshold",
    "peer_address",
    "render_site_toml",
    "save_genesis",
    "save_invite",
    "site_addresses",
]

#!/usr/bin/env bash
# Installs and runs the real services wormsign talks to, on loopback, for
# development and tests: a single-node Apache Kafka in KRaft mode (jars from
# Maven Central, run with the machine's Java), a ClickHouse server (the
# Debian package, 18.16) and a current ClickHouse (the engine of PyPI's
# chdb-core, installed with pip into a virtual environment, serving the
# native and HTTP protocols as clickhouse-local). Everything they write lives
# under $SERVICES_DIR.
#
#   deploy/services.sh up      install what is missing, start, wait until all answer
#   deploy/services.sh down    stop them (and the clusters below)
#   deploy/services.sh status  say what runs
#
# A three-node Kafka cluster, apart from the single broker and started only
# when asked for (the cluster tests, bus/cluster_test.go, start it
# themselves): three KRaft nodes, each broker and controller, the three
# controllers one quorum, on 127.0.0.1:19092-19094 (controllers
# 19095-19097; SERVICES_KAFKA_CLUSTER_PORT moves them), with replication 3,
# min.insync.replicas 2 and no unclean leader election
# (deploy/kafka/cluster.properties), state in $SERVICES_DIR/kafka-cluster.
#
#   deploy/services.sh up kafka-cluster      format once, start the nodes that do not run, wait
#   deploy/services.sh down kafka-cluster    stop the three nodes
#   deploy/services.sh status kafka-cluster  say which nodes run
#   deploy/services.sh kill kafka-cluster N  SIGKILL node N (1-3), for fault drills; `up
#                                            kafka-cluster` starts it again on its state
#
# The ClickHouse cluster `wormsign`, apart from the single servers and
# started only when asked for (the cluster tests start private ones
# themselves): a standalone ZooKeeper (jars from Maven Central) on 2181 and
# four ClickHouse 18.16 servers, 2 shards x 2 replicas, native ports
# 9211-9214, HTTP 8211-8214, interserver 9311-9314 (SERVICES_ZOOKEEPER_PORT,
# SERVICES_CLICKHOUSE_CLUSTER_*PORT move them), state in
# $SERVICES_DIR/zookeeper and $SERVICES_DIR/clickhouse-cluster/N.
#
#   deploy/services.sh up clickhouse-cluster      start ZooKeeper and the servers that do not run, wait
#   deploy/services.sh down clickhouse-cluster    stop them
#   deploy/services.sh status clickhouse-cluster  say which run
#
# Where WORMSIGN_KAFKA_BROKERS, WORMSIGN_CLICKHOUSE_ADDR or
# WORMSIGN_TEST_CLICKHOUSE_MODERN_ADDR point at existing services, that
# service is left alone; so is a current ClickHouse already answering on its
# port (e.g. started from another checkout). Idempotent: `up` twice is
# harmless.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${SERVICES_DIR:-$here/../.services}
mkdir -p "$state"
state=$(cd "$state" && pwd)

kafka_port=${SERVICES_KAFKA_PORT:-9092}
kafka_controller_port=$((kafka_port + 1))
# SASL_SSL listener for tests of kafka.tls and kafka.sasl (user wormsign,
# password in $state/kafka/tls/sasl-password, CA in $state/kafka/tls/ca.pem).
kafka_sasl_port=${SERVICES_KAFKA_SASL_PORT:-$((kafka_port + 2))}
kafka_sasl_user=wormsign
# The three-node cluster (`up kafka-cluster`): brokers on cluster_port,
# +1, +2, their controllers on +3, +4, +5; the JVM heap of each node.
cluster_port=${SERVICES_KAFKA_CLUSTER_PORT:-19092}
cluster_heap=${SERVICES_KAFKA_CLUSTER_HEAP:-512m}
ch_port=${SERVICES_CLICKHOUSE_PORT:-9000}
ch_http_port=${SERVICES_CLICKHOUSE_HTTP_PORT:-8123}
chm_port=${SERVICES_CLICKHOUSE_MODERN_PORT:-9100}
chm_http_port=${SERVICES_CLICKHOUSE_MODERN_HTTP_PORT:-8124}
chdb_version=${SERVICES_CHDB_VERSION:-26.9.0}
# The ClickHouse cluster: ZooKeeper, then server N (1..4) of shard
# (N+1)/2 on tcp base+N, http base+N, interserver base+N.
zk_port=${SERVICES_ZOOKEEPER_PORT:-2181}
chc_name=${SERVICES_CLICKHOUSE_CLUSTER:-wormsign}
chc_tcp_base=${SERVICES_CLICKHOUSE_CLUSTER_PORT:-9210}
chc_http_base=${SERVICES_CLICKHOUSE_CLUSTER_HTTP_PORT:-8210}
chc_interserver_base=${SERVICES_CLICKHOUSE_CLUSTER_INTERSERVER_PORT:-9310}
chc_servers=4

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # name seconds command...
	local name=$1 secs=$2
	shift 2
	for _ in $(seq "$secs"); do
		if "$@"; then return 0; fi
		sleep 1
	done
	log "$name did not answer within ${secs}s; its log follows"
	return 1
}

apt_install() { # packages...
	local missing=()
	for p in "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Kafka jars, fetched once into $state/kafka/libs; the single broker
# and the cluster's nodes run from them.
kafka_libs() {
	local dir=$state/kafka
	mkdir -p "$dir"
	command -v java >/dev/null || { log "java is required for Kafka"; exit 1; }
	maven_libs "Apache Kafka" "$here/kafka/pom.xml" "$dir/libs" "$dir/mvn.log"
}

# maven_libs what pom libs log: the dependencies of pom copied into libs
# from Maven Central, once (libs/.complete marks a whole fetch); Maven's
# output goes to log, and is shown when it fails.
maven_libs() {
	local what=$1 pom=$2 libs=$3 mvnlog=$4
	[ -f "$libs/.complete" ] && return 0
	command -v mvn >/dev/null || { log "maven is required to fetch $what"; exit 1; }
	log "fetching $what from Maven Central"
	rm -rf "$libs"
	mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$libs" >"$mvnlog" 2>&1 ||
		{ cat "$mvnlog"; exit 1; }
	touch "$libs/.complete"
}

# A new id from Kafka's StorageTool (a cluster's, a directory's). The tool
# logs to stdout too (log4j.properties' appender), before the id: only the
# last line is the id.
kafka_uuid() { # log jvm...
	local log=$1 id
	shift
	id=$(java "$@" -cp "$state/kafka/libs/*" kafka.tools.StorageTool random-uuid 2>>"$log" | tail -n 1)
	[[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || { log "kafka StorageTool random-uuid gave no id: $id"; exit 1; }
	echo "$id"
}

kafka_up() {
	local dir=$state/kafka
	mkdir -p "$dir"
	if running "$dir/pid"; then return 0; fi
	kafka_libs
	kafka_tls "$dir/tls"
	local password
	password=$(cat "$dir/tls/sasl-password")
	{
		sed -e "s|@DATA@|$dir/data|" -e "s|@PORT@|$kafka_port|g" \
			-e "s|@CONTROLLER_PORT@|$kafka_controller_port|g" \
			"$here/kafka/server.properties"
		# The same lines as internal/testenv.SecureKafkaProperties.
		cat <<-EOF

			# A SASL_SSL listener for clients (tests of kafka.tls and kafka.sasl)
			listeners=PLAINTEXT://127.0.0.1:$kafka_port,SASL_SSL://127.0.0.1:$kafka_sasl_port,CONTROLLER://127.0.0.1:$kafka_controller_port
			advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port,SASL_SSL://127.0.0.1:$kafka_sasl_port,CONTROLLER://127.0.0.1:$kafka_controller_port
			listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
			sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
			listener.name.sasl_ssl.ssl.keystore.type=PEM
			listener.name.sasl_ssl.ssl.keystore.location=$dir/tls/server-store.pem
			listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$kafka_sasl_user="$password";
			listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
			listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
		EOF
	} >"$dir/server.properties"
	chmod 600 "$dir/server.properties"
	cp "$here/kafka/log4j.properties" "$dir/log4j.properties"
	local cp="$dir/libs/*"
	local jvm=(-Xms256m -Xmx1g -Dlog4j.configuration="file:$dir/log4j.properties")
	local scram_added=
	if [ ! -f "$dir/data/meta.properties" ]; then
		local id
		id=$(kafka_uuid "$dir/format.log" "${jvm[@]}")
		# A fresh store gets the SCRAM users with it.
		java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format --standalone \
			-t "$id" -c "$dir/server.properties" \
			--add-scram "SCRAM-SHA-256=[name=$kafka_sasl_user,password=$password]" \
			--add-scram "SCRAM-SHA-512=[name=$kafka_sasl_user,password=$password]" \
			>>"$dir/format.log" 2>&1 || { cat "$dir/format.log"; exit 1; }
		scram_added=1
	fi
	log "starting Kafka on 127.0.0.1:$kafka_port"
	nohup java "${jvm[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties" \
		>"$dir/kafka.log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
	# The port opens before the broker has registered with its controller;
	# "started" in the log is the broker's own word that it serves requests.
	wait_for kafka 120 kafka_ready "$dir" || { tail -50 "$dir/kafka.log"; exit 1; }
	if [ -z "$scram_added" ]; then
		# A store formatted before (or by an older services.sh): the SCRAM
		# users through the admin API, on the PLAINTEXT listener, one
		# mechanism per request (Kafka refuses two for a user in one).
		local m
		for m in SCRAM-SHA-256 SCRAM-SHA-512; do
			java "${jvm[@]}" -cp "$cp" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$kafka_port" \
				--alter --entity-type users --entity-name "$kafka_sasl_user" \
				--add-config "$m=[password=$password]" \
				>"$dir/scram.log" 2>&1 || { tail -5 "$dir/scram.log"; exit 1; }
		done
	fi
}

kafka_ready() { port_open "$kafka_port" && port_open "$kafka_sasl_port" && grep -q 'Kafka Server started' "$1/kafka.log"; }

# The three-node cluster: node N (1..3) is broker and controller, its
# client listener on cluster_port+N-1 and its controller on
# cluster_port+N+2, its state in $state/kafka-cluster/nodeN. The storage of
# all three is formatted together, once, as one cluster whose three
# controllers form the initial quorum; `up kafka-cluster` then starts the
# nodes that do not run (all of them, or one that was killed) and waits
# until each says it serves.
cluster_nodes=(1 2 3)
cluster_broker_port() { echo $((cluster_port + $1 - 1)); }
cluster_controller_port() { echo $((cluster_port + $1 + 2)); }
cluster_brokers() {
	local n out=
	for n in "${cluster_nodes[@]}"; do out+=${out:+,}127.0.0.1:$(cluster_broker_port "$n"); done
	echo "$out"
}

kafka_cluster_format() { # dir jvm...
	local dir=$1
	shift
	local cp="$state/kafka/libs/*" n controllers= initial= id
	for n in "${cluster_nodes[@]}"; do
		controllers+=${controllers:+,}127.0.0.1:$(cluster_controller_port "$n")
	done
	for n in "${cluster_nodes[@]}"; do
		mkdir -p "$dir/node$n"
		sed -e "s|@NODE_ID@|$n|" -e "s|@DATA@|$dir/node$n/data|" \
			-e "s|@PORT@|$(cluster_broker_port "$n")|g" \
			-e "s|@CONTROLLER_PORT@|$(cluster_controller_port "$n")|g" \
			-e "s|@CONTROLLERS@|$controllers|" \
			"$here/kafka/cluster.properties" >"$dir/node$n/server.properties"
	done
	[ -f "$dir/.formatted" ] && return 0
	# A format that stopped half way leaves nodes of no cluster: start over.
	for n in "${cluster_nodes[@]}"; do rm -rf "$dir/node$n/data"; done
	id=$(kafka_uuid "$dir/format.log" "$@")
	# The initial voters name each controller's metadata directory by an
	# id of its own; every node is formatted with the same list.
	for n in "${cluster_nodes[@]}"; do
		initial+=${initial:+,}$n@127.0.0.1:$(cluster_controller_port "$n"):$(kafka_uuid "$dir/format.log" "$@")
	done
	for n in "${cluster_nodes[@]}"; do
		java "$@" -cp "$cp" kafka.tools.StorageTool format -t "$id" -c "$dir/node$n/server.properties" \
			--initial-controllers "$initial" >>"$dir/format.log" 2>&1 || { cat "$dir/format.log"; exit 1; }
	done
	echo "$id" >"$dir/cluster-id"
	touch "$dir/.formatted"
}

kafka_cluster_up() {
	local dir=$state/kafka-cluster n port started=()
	mkdir -p "$dir"
	kafka_libs
	cp "$here/kafka/log4j.properties" "$dir/log4j.properties"
	# Three JVMs share two cores here: a modest heap each, the serial
	# collector and C1 only, which start fastest.
	local jvm=(-Xms128m "-Xmx$cluster_heap" -XX:+UseSerialGC -XX:TieredStopAtLevel=1
		-Dlog4j.configuration="file:$dir/log4j.properties")
	kafka_cluster_format "$dir" "${jvm[@]}"
	cluster_brokers >"$dir/brokers"
	for n in "${cluster_nodes[@]}"; do
		running "$dir/node$n/pid" && continue
		for port in "$(cluster_broker_port "$n")" "$(cluster_controller_port "$n")"; do
			if port_open "$port"; then
				log "port $port of kafka-cluster node $n is taken by another process (another checkout's cluster? SERVICES_KAFKA_CLUSTER_PORT moves it)"
				exit 1
			fi
		done
		# The log of the run before (e.g. one that was killed) is kept once.
		[ -f "$dir/node$n/kafka.log" ] && mv "$dir/node$n/kafka.log" "$dir/node$n/kafka.log.1"
		log "starting kafka-cluster node $n on 127.0.0.1:$(cluster_broker_port "$n") (controller $(cluster_controller_port "$n"))"
		nohup java "${jvm[@]}" -cp "$state/kafka/libs/*" kafka.Kafka "$dir/node$n/server.properties" \
			>"$dir/node$n/kafka.log" 2>&1 </dev/null &
		echo $! >"$dir/node$n/pid"
		started+=("$n")
	done
	# A node serves once a majority of the controllers runs: the nodes
	# started together wait for each other.
	for n in "${started[@]}"; do
		wait_for "kafka-cluster node $n" 180 kafka_cluster_node_ready "$n" ||
			{ tail -50 "$dir/node$n/kafka.log"; exit 1; }
	done
	log "kafka-cluster: brokers $(cat "$dir/brokers")"
}

kafka_cluster_node_ready() { # node
	local dir=$state/kafka-cluster/node$1
	running "$dir/pid" && port_open "$(cluster_broker_port "$1")" && grep -q 'Kafka Server started' "$dir/kafka.log"
}

# Stops the nodes together: a node stopped after the others would wait for
# a controller majority to let it shut down in order, and never get one.
kafka_cluster_down() {
	local dir=$state/kafka-cluster n pids=()
	for n in "${cluster_nodes[@]}"; do
		if running "$dir/node$n/pid"; then
			log "stopping kafka-cluster node $n"
			pids+=("$(cat "$dir/node$n/pid")")
			kill "${pids[-1]}"
		fi
	done
	for _ in $(seq 60); do
		local alive=
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 1
	done
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	for n in "${cluster_nodes[@]}"; do rm -f "$dir/node$n/pid"; done
}

# SIGKILL of one node, as a crash or the OOM killer would: for fault
# drills; `up kafka-cluster` starts it again on its state.
kafka_cluster_kill() { # node
	local pidfile=$state/kafka-cluster/node$1/pid
	[[ $1 =~ ^[123]$ ]] || { echo "usage: $0 kill kafka-cluster 1|2|3" >&2; exit 2; }
	running "$pidfile" || { log "kafka-cluster node $1 does not run"; exit 1; }
	log "killing kafka-cluster node $1 (SIGKILL)"
	local pid
	pid=$(cat "$pidfile")
	kill -9 "$pid"
	for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	rm -f "$pidfile"
}

kafka_cluster_status() {
	local dir=$state/kafka-cluster n up=()
	for n in "${cluster_nodes[@]}"; do running "$dir/node$n/pid" && up+=("$n"); done
	case ${#up[@]} in
	0) echo "kafka-cluster: stopped" ;;
	"${#cluster_nodes[@]}") echo "kafka-cluster: running ($(cluster_brokers))" ;;
	*) echo "kafka-cluster: nodes ${up[*]} of ${#cluster_nodes[@]} running ($(cluster_brokers))" ;;
	esac
}

# A CA and the broker's certificate (127.0.0.1, localhost) made with
# openssl, once; the SASL password made up once. Kafka reads the key and
# the certificate from one PEM key store (key in PKCS#8, unencrypted).
kafka_tls() { # dir
	local tls=$1
	mkdir -p "$tls"
	if [ ! -f "$tls/server-store.pem" ]; then
		command -v openssl >/dev/null || apt_install openssl
		log "making the Kafka SASL_SSL listener's certificates in $tls"
		(
			cd "$tls"
			openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
				-keyout ca.key -out ca.pem -subj "/CN=wormsign development CA" 2>/dev/null
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
				-keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
			printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
			openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
				-extfile server.ext -out server.pem 2>/dev/null
			openssl pkcs8 -topk8 -nocrypt -in server.key -out server.pk8
			cat server.pk8 server.pem >server-store.pem
			chmod 600 ca.key server.key server.pk8 server-store.pem
		)
	fi
	[ -f "$tls/sasl-password" ] || (umask 077 && openssl rand -hex 16 >"$tls/sasl-password")
}

clickhouse_up() {
	local dir=$state/clickhouse
	mkdir -p "$dir/data" "$dir/tmp" "$dir/log" "$dir/user_files" "$dir/format_schemas"
	if running "$dir/pid"; then return 0; fi
	apt_install clickhouse-server clickhouse-client
	sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$ch_port|g" -e "s|@HTTP_PORT@|$ch_http_port|g" \
		"$here/clickhouse/config.xml" >"$dir/config.xml"
	cp "$here/clickhouse/users.xml" "$dir/users.xml"
	log "starting ClickHouse on 127.0.0.1:$ch_port"
	nohup /usr/sbin/clickhouse-server --config-file="$dir/config.xml" \
		>"$dir/log/stdout.log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
	wait_for clickhouse 60 clickhouse_ready ||
		{ tail -50 "$dir/log/server.err.log" "$dir/log/stdout.log"; exit 1; }
}

clickhouse_ready() { clickhouse-client --port "$ch_port" -q 'SELECT 1' >/dev/null 2>&1; }

# The current ClickHouse: chdb-core's clickhouse-local, started by
# deploy/clickhouse-modern/serve.py in a directory holding its config.xml.
clickhouse_modern_up() {
	local dir=$state/clickhouse-modern
	mkdir -p "$dir/data" "$dir/log"
	if running "$dir/pid"; then return 0; fi
	if clickhouse_modern_ready; then
		log "a ClickHouse already answers on 127.0.0.1:$chm_http_port; using it"
		return 0
	fi
	if [ ! -f "$dir/venv/.chdb-$chdb_version" ]; then
		python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
		log "installing chdb-core $chdb_version from PyPI into $dir/venv"
		rm -rf "$dir/venv"
		python3 -m venv "$dir/venv"
		# Only the engine: numpy, pandas and pyarrow serve chdb's Python
		# API, not the server.
		"$dir/venv/bin/pip" install -q --disable-pip-version-check --no-deps \
			"chdb-core==$chdb_version" >"$dir/pip.log" 2>&1 || { cat "$dir/pip.log"; exit 1; }
		touch "$dir/venv/.chdb-$chdb_version"
	fi
	sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$chm_port|g" -e "s|@HTTP_PORT@|$chm_http_port|g" \
		"$here/clickhouse-modern/config.xml" >"$dir/config.xml"
	cp "$here/clickhouse-modern/users.xml" "$here/clickhouse-modern/serve.py" "$dir/"
	log "starting ClickHouse $chdb_version (chdb-core) on 127.0.0.1:$chm_port"
	(cd "$dir" && exec nohup "$dir/venv/bin/python" serve.py "$dir/data" \
		>"$dir/log/stdout.log" 2>&1 </dev/null) &
	echo $! >"$dir/pid"
	wait_for clickhouse-modern 60 clickhouse_modern_ready ||
		{ tail -50 "$dir/log/stdout.log" "$dir/log/server.err.log" 2>/dev/null; exit 1; }
}

# Ready when the HTTP port answers /ping: the ports open only once the
# engine has loaded its tables.
clickhouse_modern_ready() {
	local reply
	reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$chm_http_port" &&
		printf 'GET /ping HTTP/1.0\r\n\r\n' >&3 && timeout 5 cat <&3) 2>/dev/null) || return 1
	[[ $reply == *"Ok."* ]]
}

# --- ClickHouse cluster (ZooKeeper + 2 shards x 2 replicas of 18.16) ---

zookeeper_up() {
	local dir=$state/zookeeper
	# The jars may be shared between state directories (the tests start
	# private clusters): SERVICES_ZOOKEEPER_LIBS.
	local libs=${SERVICES_ZOOKEEPER_LIBS:-$dir/libs}
	mkdir -p "$dir/data" "$(dirname "$libs")"
	if running "$dir/pid"; then return 0; fi
	if port_open "$zk_port"; then
		log "port $zk_port is taken by something else; set SERVICES_ZOOKEEPER_PORT"
		exit 1
	fi
	command -v java >/dev/null || { log "java is required for ZooKeeper"; exit 1; }
	(
		# One fetch at a time into a shared directory.
		flock 9
		maven_libs "Apache ZooKeeper" "$here/zookeeper/pom.xml" "$libs" "$dir/mvn.log"
	) 9>"$libs.lock"
	sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$zk_port|g" "$here/zookeeper/zoo.cfg" >"$dir/zoo.cfg"
	log "starting ZooKeeper on 127.0.0.1:$zk_port"
	nohup java -Xms64m -Xmx256m -Dlogback.configurationFile="$here/zookeeper/logback.xml" \
		-Dzookeeper.log.file="$dir/zookeeper.log" -cp "$libs/*" \
		org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" \
		>"$dir/stdout.log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
	wait_for zookeeper 60 zookeeper_ready || { tail -n 50 "$dir/zookeeper.log" "$dir/stdout.log"; exit 1; }
}

# The four-letter word stat names the server's mode once it serves
# clients. (ruok answers imok as soon as the port is bound, even when the
# server died loading its data.)
zookeeper_ready() {
	local reply
	reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$zk_port" && printf stat >&3 && timeout 5 cat <&3) 2>/dev/null) || return 1
	[[ $reply == *"Mode: standalone"* ]]
}

# The <shard> elements of remote_servers, the same on every server.
clickhouse_cluster_shards() {
	local n shard
	for shard in 1 2; do
		printf '            <shard>\n                <internal_replication>true</internal_replication>\n'
		for n in $((2 * shard - 1)) $((2 * shard)); do
			printf '                <replica><host>127.0.0.1</host><port>%d</port></replica>\n' $((chc_tcp_base + n))
		done
		printf '            </shard>\n'
	done
}

clickhouse_cluster_server_up() { # n (1..4)
	local n=$1 dir=$state/clickhouse-cluster/$1
	mkdir -p "$dir/data" "$dir/tmp" "$dir/log" "$dir/user_files" "$dir/format_schemas"
	if running "$dir/pid"; then return 0; fi
	local shards
	shards=$(clickhouse_cluster_shards)
	# Shard 01 holds servers 1 and 2, shard 02 servers 3 and 4.
	sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$((chc_tcp_base + n))|g" \
		-e "s|@HTTP_PORT@|$((chc_http_base + n))|g" \
		-e "s|@INTERSERVER_PORT@|$((chc_interserver_base + n))|g" \
		-e "s|@CLUSTER@|$chc_name|g" -e "s|@ZOOKEEPER_PORT@|$zk_port|g" \
		-e "s|@SHARD@|0$(((n + 1) / 2))|g" -e "s|@REPLICA@|replica$n|g" \
		"$here/clickhouse-cluster/config.xml" | awk -v shards="$shards" '/@SHARDS@/ { print shards; next } { print }' \
		>"$dir/config.xml"
	cp "$here/clickhouse-cluster/users.xml" "$dir/users.xml"
	log "starting ClickHouse cluster server $n on 127.0.0.1:$((chc_tcp_base + n))"
	nohup /usr/sbin/clickhouse-server --config-file="$dir/config.xml" \
		>"$dir/log/stdout.log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
}

clickhouse_cluster_server_ready() { # n
	clickhouse-client --port $((chc_tcp_base + $1)) -q 'SELECT 1' >/dev/null 2>&1
}

clickhouse_cluster_up() {
	apt_install clickhouse-server clickhouse-client
	zookeeper_up
	local n
	for n in $(seq "$chc_servers"); do clickhouse_cluster_server_up "$n"; done
	for n in $(seq "$chc_servers"); do
		wait_for "clickhouse cluster server $n" 60 clickhouse_cluster_server_ready "$n" ||
			{ tail -n 30 "$state/clickhouse-cluster/$n/log/server.err.log" "$state/clickhouse-cluster/$n/log/stdout.log"; exit 1; }
	done
	log "ClickHouse cluster $chc_name ready: tcp $((chc_tcp_base + 1))-$((chc_tcp_base + chc_servers)), ZooKeeper $zk_port"
}

clickhouse_cluster_down() {
	local n
	for n in $(seq "$chc_servers"); do stop "clickhouse cluster server $n" "$state/clickhouse-cluster/$n/pid"; done
	stop zookeeper "$state/zookeeper/pid"
}

clickhouse_cluster_status() {
	running "$state/zookeeper/pid" && echo "zookeeper: running (127.0.0.1:$zk_port)" || echo "zookeeper: stopped"
	local n
	for n in $(seq "$chc_servers"); do
		running "$state/clickhouse-cluster/$n/pid" &&
			echo "clickhouse-cluster $n (shard $(((n + 1) / 2))): running (127.0.0.1:$((chc_tcp_base + n)), HTTP $((chc_http_base + n)))" ||
			echo "clickhouse-cluster $n (shard $(((n + 1) / 2))): stopped"
	done
}

stop() { # name pidfile
	local pidfile=$2
	if running "$pidfile"; then
		log "stopping $1"
		local pid
		pid=$(cat "$pidfile")
		kill "$pid"
		for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
}

target=${2:-}
case $target in
"" | kafka-cluster | clickhouse-cluster) ;;
*)
	echo "usage: $0 up|down|status [kafka-cluster|clickhouse-cluster]; $0 kill kafka-cluster 1|2|3" >&2
	exit 2
	;;
esac

if [ "$target" = clickhouse-cluster ]; then
	case ${1:-} in
	up) clickhouse_cluster_up ;;
	down) clickhouse_cluster_down ;;
	status) clickhouse_cluster_status ;;
	*)
		echo "usage: $0 up|down|status clickhouse-cluster" >&2
		exit 2
		;;
	esac
	exit 0
fi

case ${1:-} in
up)
	if [ "$target" = kafka-cluster ]; then
		kafka_cluster_up
		log "ready"
		exit 0
	fi
	if [ -z "${WORMSIGN_KAFKA_BROKERS:-}" ]; then kafka_up; else log "using Kafka at $WORMSIGN_KAFKA_BROKERS"; fi
	if [ -z "${WORMSIGN_CLICKHOUSE_ADDR:-}" ]; then clickhouse_up; else log "using ClickHouse at $WORMSIGN_CLICKHOUSE_ADDR"; fi
	if [ -z "${WORMSIGN_TEST_CLICKHOUSE_MODERN_ADDR:-}" ]; then
		clickhouse_modern_up
	else
		log "using the current ClickHouse at $WORMSIGN_TEST_CLICKHOUSE_MODERN_ADDR"
	fi
	log "ready"
	;;
down)
	kafka_cluster_down
	[ "$target" = kafka-cluster ] && exit 0
	clickhouse_cluster_down
	stop kafka "$state/kafka/pid"
	stop clickhouse "$state/clickhouse/pid"
	stop clickhouse-modern "$state/clickhouse-modern/pid"
	;;
status)
	if [ -z "$target" ]; then
		running "$state/kafka/pid" && echo "kafka: running (127.0.0.1:$kafka_port, SASL_SSL $kafka_sasl_port)" || echo "kafka: stopped"
		running "$state/clickhouse/pid" && echo "clickhouse: running (127.0.0.1:$ch_port)" || echo "clickhouse: stopped"
		running "$state/clickhouse-modern/pid" && echo "clickhouse-modern: running (127.0.0.1:$chm_port, HTTP $chm_http_port)" ||
			echo "clickhouse-modern: stopped"
	fi
	kafka_cluster_status
	if [ -z "$target" ]; then clickhouse_cluster_status; fi
	;;
kill)
	[ "$target" = kafka-cluster ] || { echo "usage: $0 kill kafka-cluster 1|2|3" >&2; exit 2; }
	kafka_cluster_kill "${3:-}"
	;;
*)
	echo "usage: $0 up|down|status [kafka-cluster|clickhouse-cluster]; $0 kill kafka-cluster 1|2|3" >&2
	exit 2
	;;
esac

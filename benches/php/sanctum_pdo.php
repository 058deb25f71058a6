<?php
// Laravel Sanctum's per-request work on SQLite, without the framework: what
// `PersonalAccessToken::findToken` does for `id|secret` (split, `find($id)` as Eloquent
// issues it, `hash_equals` of the sha256), over Laravel's own table with 1,000 tokens.
// A lower bound on Sanctum's cost (no model hydration, no middleware), to set beside
// `benches/sql.rs`'s `sqlite/sanctum/*` figures on the same machine.
//
//   php benches/php/sanctum_pdo.php            # 15 rounds of 20,000 lookups
//
// Prints the minimum and median over the rounds, in microseconds per lookup, for the
// statement prepared per lookup (as Laravel does) and prepared once.

$path = sys_get_temp_dir() . '/apitoken-bench-php-' . getmypid() . '.db';
@unlink($path);
$pdo = new PDO('sqlite:' . $path);
$pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_EXCEPTION);
// Laravel's migration on SQLite (as in `tests/support/stores.rs`); journal mode left as
// SQLite's default, as Laravel leaves it.
$pdo->exec('create table "personal_access_tokens" ("id" integer primary key autoincrement not null, "tokenable_type" varchar not null, "tokenable_id" integer not null, "name" text not null, "token" varchar not null, "abilities" text, "last_used_at" datetime, "expires_at" datetime, "created_at" datetime, "updated_at" datetime)');
$pdo->exec('create index "personal_access_tokens_tokenable_type_tokenable_id_index" on "personal_access_tokens" ("tokenable_type", "tokenable_id")');
$pdo->exec('create unique index "personal_access_tokens_token_unique" on "personal_access_tokens" ("token")');
$pdo->exec('create index "personal_access_tokens_expires_at_index" on "personal_access_tokens" ("expires_at")');

$insert = $pdo->prepare('insert into "personal_access_tokens" ("tokenable_type", "tokenable_id", "name", "token", "abilities", "created_at", "updated_at") values (?, ?, ?, ?, ?, ?, ?)');
$tokens = [];
$pdo->beginTransaction();
for ($i = 0; $i < 1000; $i++) {
    $secret = bin2hex(random_bytes(20));
    $now = gmdate('Y-m-d H:i:s');
    $insert->execute(['App\\Models\\User', 1, "bench-$i", hash('sha256', $secret), '["vps:read","vps:write"]', $now, $now]);
    $tokens[] = $pdo->lastInsertId() . '|' . $secret;
}
$pdo->commit();
$token = $tokens[500];

$sql = 'select * from "personal_access_tokens" where "personal_access_tokens"."id" = ? limit 1';
$once = $pdo->prepare($sql);

function find_token($pdo, $sql, $once, $token) {
    [$id, $secret] = explode('|', $token, 2);
    $statement = $once ?? $pdo->prepare($sql);
    $statement->execute([$id]);
    $row = $statement->fetch(PDO::FETCH_ASSOC);
    $statement->closeCursor();
    return $row !== false && hash_equals($row['token'], hash('sha256', $secret));
}

$per = 20000;
$results = ['prepared_per_lookup' => [], 'prepared_once' => []];
for ($round = 0; $round < 15; $round++) {
    foreach (['prepared_per_lookup' => null, 'prepared_once' => $once] as $name => $statement) {
        $started = hrtime(true);
        for ($i = 0; $i < $per; $i++) {
            if (!find_token($pdo, $sql, $statement, $token)) {
                fwrite(STDERR, "lookup failed\n");
                exit(1);
            }
        }
        $results[$name][] = (hrtime(true) - $started) / $per / 1000.0;
    }
}
foreach ($results as $name => $rounds) {
    sort($rounds);
    printf("php/pdo_sqlite/%s: min %.2f us, median %.2f us\n", $name, $rounds[0], $rounds[intdiv(count($rounds), 2)]);
}
@unlink($path);
